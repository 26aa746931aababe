"""Test DICOM objects: a DICONDE-like DX frame with NDE modules, and pydicom-data's CR frames."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: A private NDE block as DICONDE writes its component, inspection and equipment details.
NDE_CREATOR = "DRDAEMON TEST NDE"
NDE_VALUES = {
    0x10: ("LO", "turbine blade 7 / weld seam B"),
    0x11: ("DS", "12.5"),
    0x12: ("OB", bytes(range(7)) + b"\x00"),
}


def pydicom_data_file(name: str) -> Path:
    data_store = pytest.importorskip("data_store", reason="the pydicom-data package is not installed")
    path = Path(data_store.__file__).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom-data release")
    return path


def diconde_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    series_uid: str | None = None,
    for_processing: bool = True,
) -> Dataset:
    """A DX frame with the component (patient), inspection (study), equipment and private NDE details."""
    rows, columns = pixels.shape
    ds = Dataset()
    ds.SOPClassUID = DX_FOR_PROCESSING if for_processing else DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1001"
    ds.SeriesInstanceUID = series_uid or "1.2.826.0.1.3680043.8.498.1002"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1003"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.StudyDate, ds.StudyTime = "20261130", "101500"
    ds.ContentDate, ds.ContentTime = "20261130", "101501"
    ds.AccessionNumber = "WO-4711"
    ds.Modality = "DX"
    ds.Manufacturer = "Test Detectors"
    ds.InstitutionName = "Weld Lab 3"
    ds.ReferringPhysicianName = ""
    ds.StationName = "DR-STATION-1"
    ds.StudyDescription = "weld seam inspection"
    ds.SeriesDescription = "seam B"
    ds.ManufacturerModelName = "XRD 1611"
    ds.PatientName = "BLADE^7"  # DICONDE: the component
    ds.PatientID = "SN-20261130-7"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = ""
    ds.DeviceSerialNumber = "D-0815"
    ds.SoftwareVersions = "station 4.2"
    ds.KVP = "160"
    ds.ExposureTime = "2000"
    ds.XRayTubeCurrent = "5"
    ds.ImagerPixelSpacing = ["0.100", "0.100"]
    ds.PixelSpacing = ["0.100", "0.100"]
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorID = "D-0815"
    ds.PositionerType = "NONE"
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ["A", "F"]
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionContextSequence = Sequence()
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = f"{intercept if intercept is not None else 0:g}"
    ds.RescaleSlope = f"{slope if slope is not None else 1:g}"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.AnatomicRegionSequence = Sequence()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if not for_processing:
        ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    block = ds.private_block(0x0009, NDE_CREATOR, create=True)
    for offset, (vr, value) in NDE_VALUES.items():
        block.add_new(offset, vr, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if allocated == 16 else "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def dicom_bytes(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """``ds`` as a Part 10 file, re-encoded in ``transfer_syntax`` (skips when no encoder is installed)."""
    ds = ds.copy() if hasattr(ds, "copy") else ds
    if transfer_syntax is not None and transfer_syntax != str(ds.file_meta.TransferSyntaxUID):
        syntax = pydicom.uid.UID(transfer_syntax)
        if syntax.is_compressed and not syntax.is_deflated:
            encoder = pydicom.pixels.get_encoder(syntax)
            if encoder is None or not encoder.is_available:
                pytest.skip(f"no {syntax.name} encoder installed (pip install 'drdaemon[dicom]')")
            ds.compress(syntax, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def has_decoder(transfer_syntax: str) -> bool:
    try:
        return pydicom.pixels.get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        return False
