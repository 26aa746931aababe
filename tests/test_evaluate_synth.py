"""The synthetic benchmark: deterministic, physically sensible, labels better exposed than inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon import physics as synth
from drdaemon import synth as synth_cli
from drdaemon.evaluate.quality import display_u8, information_entropy

SIZE = (192, 256)  # height, width: small for speed, not square to catch axis mix-ups


def test_same_seed_same_frames_and_other_seed_other_frames() -> None:
    a1, l1, p1, _ = synth.generate_one(7, synth.TEST_SET, 3, *SIZE)
    a2, l2, p2, _ = synth.generate_one(7, synth.TEST_SET, 3, *SIZE)
    assert np.array_equal(a1, a2) and np.array_equal(l1, l2)
    assert [d.box for d in p1.defects] == [d.box for d in p2.defects]
    a3, _, _, _ = synth.generate_one(8, synth.TEST_SET, 3, *SIZE)
    assert not np.array_equal(a1, a3)


def test_frames_are_16_bit_of_the_asked_size_with_defects_on_the_part() -> None:
    for index in range(4):
        abnormal, label, part, physics = synth.generate_one(0, synth.TEST_SET, index, *SIZE)
        assert abnormal.dtype == label.dtype == np.uint16
        assert abnormal.shape == label.shape == SIZE
        assert part.defects, "every part has at least one defect"
        for defect in part.defects:
            x0, y0, x1, y1 = defect.box
            assert 0 <= x0 < x1 <= SIZE[1] and 0 <= y0 < y1 <= SIZE[0]
            assert defect.kind in ("pore", "inclusion", "crack")
            assert part.thickness_mm[y0:y1, x0:x1].max() > 0  # on material, not in the air
        assert physics.dose > 0


def test_a_pore_removes_material_and_brightens_the_label() -> None:
    # Thickness along the beam drops inside a pore, so transmission, and the label, rise there.
    for index in range(6):
        _abnormal, _label, part, _ = synth.generate_one(0, synth.TEST_SET, index, 384, 384)
        pores = [d for d in part.defects if d.kind == "pore"]
        if pores:
            break
    defect = max(pores, key=lambda d: d.box[2] - d.box[0])
    x0, y0, x1, y1 = defect.box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    assert part.thickness_mm[cy, cx] < defect.thickness_mm


def test_abnormal_frames_clip_thin_and_starve_thick_material_and_labels_fix_both() -> None:
    for index in range(4):
        abnormal, label, part, _physics = synth.generate_one(1, synth.TEST_SET, index, *SIZE)
        material = part.thickness_mm > 0.5
        shown_in, shown_label = display_u8(abnormal)[material], display_u8(label)[material]
        clipped_in = np.mean(abnormal[material] == 65535)
        assert 0.15 < clipped_in < 0.6  # the exposure saturates a good share of the part
        assert np.mean(label[material] == 65535) < 0.02
        thick = part.thickness_mm > np.percentile(part.thickness_mm[material], 98)
        assert np.median(display_u8(abnormal)[thick]) < 25  # starved: dark on a display
        assert np.median(display_u8(label)[thick]) > np.median(display_u8(abnormal)[thick])
        # Better exposed by the metrics: more gray levels in use, fewer pixels at the ends of the scale.
        assert information_entropy(display_u8(label)) > information_entropy(display_u8(abnormal)) + 0.5

        def extremes(shown: np.ndarray) -> float:
            return float(np.mean((shown <= 5) | (shown >= 250)))

        assert extremes(shown_label) < extremes(shown_in)


def test_generate_writes_paired_and_unpaired_folders(tmp_path: Path) -> None:
    manifest = synth.generate(tmp_path, pairs=2, train=2, size=(96, 128), seed=3, progress=False)
    assert manifest["pairs"] == 2
    inputs = sorted((tmp_path / "test" / "input").iterdir())
    labels = sorted((tmp_path / "test" / "label").iterdir())
    assert [p.name for p in inputs] == [p.name for p in labels] and len(inputs) == 2
    assert tifffile.imread(inputs[0]).shape == (96, 128)
    boxes = json.loads((tmp_path / "test" / "defects.json").read_text())
    assert set(boxes) == {p.name for p in inputs}
    abnormal = sorted(p.name for p in (tmp_path / "train" / "abnormal").iterdir())
    normal = sorted(p.name for p in (tmp_path / "train" / "normal").iterdir())
    assert len(abnormal) == len(normal) == 2
    assert not set(abnormal) & set(normal) & {p.name for p in inputs}  # different parts everywhere
    # A part does not depend on how many were asked for.
    again = tmp_path / "again"
    synth.generate(again, pairs=1, train=0, size=(96, 128), seed=3, progress=False)
    assert np.array_equal(tifffile.imread(again / "test" / "input" / inputs[0].name), tifffile.imread(inputs[0]))


def test_cli_rejects_sizes_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        synth_cli.main(["--out", str(tmp_path), "--size", "6000x3000"])
    assert "out of range" in capsys.readouterr().err
    assert synth.parse_size("5732x2333") == (2333, 5732)
