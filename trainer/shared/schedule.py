"""Which phase of the staged schedule a global iteration belongs to.

A pure function of the iteration and the schedule, so a resumed run knows its phase from the
iteration number alone::

    prompt_init | warmup | enhance | prompt round 1 | enhance round 1 | prompt round 2 | ...
    <--------------- stage 1 ----------> <-------------- stage 2 alternation ----------->
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from trainer.shared.config import ScheduleConfig


class PhaseKind(str, Enum):
    PROMPT_INIT = "prompt_init"  # only the prompts learn, classification loss
    WARMUP = "warmup"  # enhancer, identity + CLAHE prior only
    ENHANCE = "enhance"  # enhancer, full L_enhance, prompts frozen
    PROMPT_RANK = "prompt_rank"  # prompts, ranking loss, enhancer frozen


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    start: int
    end: int  # exclusive
    #: stage 2 round number (1, 2, ...); 0 in stage 1
    round: int = 0

    @property
    def label(self) -> str:
        return self.kind.value if self.round == 0 else f"{self.kind.value}#{self.round}"

    @property
    def trains_prompts(self) -> bool:
        return self.kind in (PhaseKind.PROMPT_INIT, PhaseKind.PROMPT_RANK)


def phase_at(iteration: int, schedule: ScheduleConfig) -> Phase:
    """The phase that runs ``iteration`` (0-based); the last phase is cut at ``total_iters``."""
    if not 0 <= iteration < schedule.total_iters:
        raise ValueError(f"iteration {iteration} outside 0..{schedule.total_iters - 1}")
    total = schedule.total_iters
    start = 0
    for kind, length in (
        (PhaseKind.PROMPT_INIT, schedule.prompt_init_iters),
        (PhaseKind.WARMUP, schedule.warmup_iters),
        (PhaseKind.ENHANCE, schedule.enhancer_iters),
    ):
        if iteration < start + length:
            return Phase(kind, start, min(start + length, total))
        start += length
    round_length = schedule.prompt_round_iters + schedule.enhancer_round_iters
    number, offset = divmod(iteration - start, round_length)
    round_start = start + number * round_length
    if offset < schedule.prompt_round_iters:
        return Phase(
            PhaseKind.PROMPT_RANK, round_start, min(round_start + schedule.prompt_round_iters, total), number + 1
        )
    enhance_start = round_start + schedule.prompt_round_iters
    return Phase(
        PhaseKind.ENHANCE, enhance_start, min(enhance_start + schedule.enhancer_round_iters, total), number + 1
    )
