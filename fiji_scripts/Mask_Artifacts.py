#@ ImageJ ij
#@ ImagePlus imp
#@ File (label="Model file (.artseg)", style="extensions:artseg") model_file
#@ File (label="Output folder (optional)", style="directory", required=false) output_dir
#@ String (label="Cleaned image", choices={"none", "median", "background"}, value="none") cleaned
#@ Float (label="Threshold (0: the model's calibrated value)", value=0, min=0, max=1, stepSize=0.05) threshold
#@ Boolean (label="Skip the U-Net on images the classifier finds clean", value=true) gate
#@output ImagePlus mask
"""Mask Artifacts (Python): ArtSeg in Fiji's Python mode (pyimagej), in-process.

Install with `artseg fiji-install /path/to/Fiji.app` (menu Plugins > ArtSeg > Mask Artifacts Python). Needs
Fiji's Python mode (Edit > Options > Python...) with an environment where `artseg` is installed. Runs on the
current plane of the active image; adds one outline per artifact to the image's overlay and the ROI Manager,
returns the 0/255 mask image and, with an output folder, writes <name>_mask.tif, <name>_rois.zip and
<name>_cleaned.tif. All logic lives in artseg_core.imagej.run_fiji_script (tested there); this file only maps
the SciJava parameters. It is kept in Python 2 syntax so that Fiji's Jython, which also runs .py files, shows
the message below instead of a syntax error.
"""
import sys

if sys.version_info[0] < 3:
    raise RuntimeError("Mask Artifacts Python needs Fiji's Python mode (Edit > Options > Python...) with "
                       "artseg installed; this is Jython. Use Plugins > ArtSeg > Mask Artifacts (the macro).")

from artseg_core.bridges.imagej import run_fiji_script  # noqa: E402

_out = run_fiji_script(imp, str(model_file),  # noqa: F821 - SciJava parameters
                       output_dir=str(output_dir) if output_dir is not None else None,  # noqa: F821
                       cleaned=str(cleaned), threshold=float(threshold) if threshold else None,  # noqa: F821
                       gate=bool(gate), ij=ij, show_mask=False)  # noqa: F821
mask = _out["mask"]
rois = _out["rois"]
print("ArtSeg: %s: p_artifact %.3f, %d artifact object(s), %.2f%% of the image"
      % (_out["row"]["image"], _out["result"].p_artifact, len(rois), 100.0 * _out["result"].area_fraction))
