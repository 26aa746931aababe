"""The ground floor: pure kernels on numpy arrays (numpy, OpenCV, SciPy, scikit-image; nothing of the project).

* :mod:`.window`: the robust percentile window and the maps between raw values, ``[0, 1]`` and 16 bits;
* :mod:`.tone`: CLAHE, histogram equalisation, gamma and the conversion to uint16 on 16-bit frames;
* :mod:`.filters`: the pipeline's operations on float32 frames in display units;
* :mod:`.noise`: the wavelet noise estimate;
* :mod:`.similarity`: PSNR and SSIM of two integer frames (scikit-image, the ``evaluate`` extra).

Every floor above (the network, io, the engines, the service, the evaluation, the bench, the
trainer) may import these; they import nothing of drdaemon.
"""
