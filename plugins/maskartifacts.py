"""
MaskArtifacts
=============

**MaskArtifacts** finds artifacts (dust, debris, fibres, bubbles, dead-cell
clumps, out-of-focus or badly lit regions) in a brightfield image with a
trained ArtSeg model and outputs them as objects.

The module is a thin bridge to the ArtSeg engine (the ``artseg_core`` Python
package): it hands the image to the engine's ``predict`` and turns the result
into CellProfiler objects, images and measurements. A classifier first scores
the whole image; when the classifier gate is on and the image is confidently
clean, the pixel-level U-Net is skipped and no artifacts are reported.

Typical uses downstream:

-  **MaskObjects** with the artifacts as the (inverted) mask, to drop nuclei or
   cells that touch an artifact;
-  **MaskImage** with the artifacts as an inverted mask, so that
   **MeasureImageIntensity** ignores artifact pixels;
-  **FlagImage** on *MaskArtifacts_AreaFraction* or *MaskArtifacts_Flagged*
   to flag or skip contaminated fields;
-  **RelateObjects** / **MeasureObjectSizeShape** on the artifacts themselves.

The model file is made with ``artseg train`` (see the ArtSeg README). The
module needs the ``artseg`` package installed in the Python environment that
runs CellProfiler.

|

============ ============ ===============
Supports 2D? Supports 3D? Respects masks?
============ ============ ===============
YES          NO           NO
============ ============ ===============

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements:**

-  *MaskArtifacts_Probability*: the classifier's probability that the image
   contains artifacts.
-  *MaskArtifacts_Flagged*: 1 if the image contains artifacts, else 0. **This
   is the measurement to filter on**: every image with an artifact mask has
   *Flagged* = 1, and an image with *Flagged* = 0 has no artifact objects and
   an empty mask (one answer per image). With "Skip clean images with the
   classifier?" = *Yes* (the default) the classifier decides: images below its
   calibrated threshold are clean and not segmented. With *No* every image is
   segmented and an image is also flagged when its mask is not empty.
-  *MaskArtifacts_AreaFraction*: fraction of the image's pixels that are
   artifact pixels.
-  *MaskArtifacts_Segmented*: 1 if the pixel-level segmentation ran, 0 if the
   classifier judged the image clean and skipped it.
-  *MaskArtifacts_Focus*, *MaskArtifacts_Illumination*,
   *MaskArtifacts_Saturation*: image-quality scores computed by the engine.
-  *MaskArtifacts_Defocus*, *MaskArtifacts_BadIllumination*,
   *MaskArtifacts_Saturated*: 1 if the matching score is outside the range the
   model learned from clean training images, else 0.
-  *Count*: the number of artifact objects.

**Object measurements** (of the artifact objects):

-  *Location_Center_X*, *Location_Center_Y*, *Location_Center_Z*,
   *Number_Object_Number*.

References
^^^^^^^^^^

-  Ali MAS, Hollo K, Laasfeld T, Torp J, Tahk M-J, Rinken A, Palo K, Parts L,
   Fishman D (2022) "ArtSeg—Artifact segmentation and removal in brightfield
   cell microscopy images without manual pixel-level annotations."
   *Scientific Reports* 12:11404. `(link) <https://doi.org/10.1038/s41598-022-14703-y>`__
   doi:10.1038/s41598-022-14703-y
"""
from __future__ import annotations

import logging
import os

import numpy
from cellprofiler_core.constants.measurement import COLTYPE_FLOAT
from cellprofiler_core.constants.measurement import COLTYPE_INTEGER
from cellprofiler_core.constants.measurement import IMAGE
from cellprofiler_core.image import Image
from cellprofiler_core.module.image_segmentation import ImageSegmentation
from cellprofiler_core.object import Objects
from cellprofiler_core.preferences import ABSOLUTE_FOLDER_NAME
from cellprofiler_core.preferences import DEFAULT_INPUT_FOLDER_NAME
from cellprofiler_core.preferences import DEFAULT_INPUT_SUBFOLDER_NAME
from cellprofiler_core.preferences import DEFAULT_OUTPUT_FOLDER_NAME
from cellprofiler_core.preferences import DEFAULT_OUTPUT_SUBFOLDER_NAME
from cellprofiler_core.setting import Binary
from cellprofiler_core.setting import Divider
from cellprofiler_core.setting import ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.text import Directory
from cellprofiler_core.setting.text import Filename
from cellprofiler_core.setting.text import ImageName
from cellprofiler_core.setting.text import Integer
from cellprofiler_core.setting.text import Text

LOGGER = logging.getLogger(__name__)

CITATION = (
    "Ali MAS, Hollo K, Laasfeld T, et al. (2022) ArtSeg - Artifact segmentation and removal in brightfield "
    "cell microscopy images without manual pixel-level annotations. Sci Rep 12:11404. "
    "doi:10.1038/s41598-022-14703-y"
)

C_MASK_ARTIFACTS = "MaskArtifacts"
FTR_PROBABILITY = "Probability"
FTR_FLAGGED = "Flagged"
FTR_AREA_FRACTION = "AreaFraction"
FTR_SEGMENTED = "Segmented"
# (feature name, key in Result.quality, column type)
QUALITY_FEATURES = (
    ("Focus", "focus", COLTYPE_FLOAT),
    ("Illumination", "illumination", COLTYPE_FLOAT),
    ("Saturation", "saturation", COLTYPE_FLOAT),
    ("Defocus", "defocus", COLTYPE_INTEGER),
    ("BadIllumination", "bad_illumination", COLTYPE_INTEGER),
    ("Saturated", "saturated", COLTYPE_INTEGER),
)
IMAGE_FEATURES = (
    (FTR_PROBABILITY, COLTYPE_FLOAT),
    (FTR_FLAGGED, COLTYPE_INTEGER),
    (FTR_AREA_FRACTION, COLTYPE_FLOAT),
    (FTR_SEGMENTED, COLTYPE_INTEGER),
) + tuple((name, coltype) for name, _, coltype in QUALITY_FEATURES)

FILL_MEDIAN = "Median of the surrounding pixels"
FILL_BACKGROUND = "Smooth background plus matched noise"
FILL_METHODS = {FILL_MEDIAN: "median", FILL_BACKGROUND: "background"}

DEVICE_AUTO = "Automatic"
DEVICE_CPU = "CPU"
DEVICE_GPU = "GPU (CUDA)"
DEVICES = {DEVICE_AUTO: "auto", DEVICE_CPU: "cpu", DEVICE_GPU: "cuda"}

DEFAULT_MODEL_FILE = "model.artseg"
#: number of settings of each settings revision (settings are matched by position in a .cppipe)
N_SETTINGS_BY_REVISION = {1: 13, 2: 16}
N_SETTINGS = N_SETTINGS_BY_REVISION[2]
#: the settings revision 2 added, with their revision-1 defaults: probability image (no, its name), torch threads
REVISION_2_DEFAULTS = ["No", "ArtifactProbability", "0"]

_THREADS_SET: list = []  # the torch thread count this process has set (once per process)


def automatic_torch_threads(cores: int | None = None, workers: int | None = None, in_worker: bool | None = None) -> int:
    """Torch threads for one CellProfiler process when the module's thread setting is 0 (automatic).

    Parameters
    ----------
    cores : int, optional
        CPU cores of the machine (default: ``os.cpu_count()``).
    workers : int, optional
        CellProfiler's worker processes (default: its "Maximum number of workers" preference).
    in_worker : bool, optional
        Whether this process is a CellProfiler analysis worker (default: detected from its command line).

    Returns
    -------
    int
        In an analysis worker ``max(1, cores // workers)``, so that the workers together use the cores once;
        in a single-process run (``cellprofiler -c -r``, test mode) all cores.
    """
    import sys

    cores = cores or os.cpu_count() or 1
    if in_worker is None:
        main = getattr(sys.modules.get("__main__"), "__file__", "") or ""
        in_worker = any(a.startswith("--work-announce") for a in sys.argv) or main.replace("\\", "/").endswith(
            "cellprofiler_core/worker/__init__.py")
    if not in_worker:
        return cores
    if workers is None:
        try:
            from cellprofiler_core.preferences import get_max_workers

            workers = int(get_max_workers())
        except Exception:  # preferences unreadable: assume one worker per core
            workers = cores
    return max(1, cores // max(1, workers))


def cap_torch_threads(n: int) -> int:
    """Set torch's intra-op thread count once per process (later calls with another value also apply).

    Returns the number of threads torch now uses.
    """
    import torch

    if n >= 1 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _THREADS_SET[:] = [torch.get_num_threads()]
    return _THREADS_SET[0]


class ModelUnavailableError(RuntimeError):
    """The ArtSeg model named by the module's settings cannot be used."""


# Models are loaded once per process and shared by every image set (and by every MaskArtifacts module
# that names the same file). The key includes size and modification time so a retrained file is reloaded.


def load_model_cached(path: str, device: str):
    """Load an ArtSeg model file once per process (the engine's model cache).

    Parameters
    ----------
    path : str
        Path of the ``.artseg`` model file.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    artseg_core.ArtifactModel

    Raises
    ------
    ModelUnavailableError
        With a message naming the file and the problem: artseg is not installed, the file is missing,
        or the engine rejected it.
    """
    if not os.path.isfile(path):
        raise ModelUnavailableError(
            f"MaskArtifacts: no ArtSeg model file at {path} "
            "(check the settings 'Model file location' and 'Model file name')"
        )
    try:
        from artseg_core.predict.cache import load_model_cached as _engine_cache
    except ImportError as exc:
        raise ModelUnavailableError(
            "MaskArtifacts needs the 'artseg' package in the Python environment that runs CellProfiler "
            f"(pip install artseg, then artseg cellprofiler-install): {exc}"
        ) from exc
    try:
        return _engine_cache(path, device=device)  # the engine's one model cache (file path, size, mtime, device)
    except Exception as exc:  # ModelFileError, OSError, torch device errors: all mean "unusable"
        problem = str(exc) if path in str(exc) else f"{path}: {exc}"
        raise ModelUnavailableError(f"MaskArtifacts: cannot use the ArtSeg model file {problem}") from exc


class OptionalNumber(Text):
    """A text setting holding a number or nothing (blank means "use the model's calibrated value")."""

    def __init__(self, text, value="", minval=None, maxval=None, integer=False, *args, **kwargs):
        self.minval = minval
        self.maxval = maxval
        self.integer = integer
        super().__init__(text, value, *args, **kwargs)

    def get_number(self):
        """The number, or None when the setting is blank."""
        text = self.value_text.strip()
        if not text:
            return None
        return int(text) if self.integer else float(text)

    def test_valid(self, pipeline):
        try:
            number = self.get_number()
        except ValueError:
            kind = "a whole number" if self.integer else "a number"
            raise ValidationError(f"Must be {kind} or blank, was '{self.value_text}'", self)
        if number is None:
            return
        if self.minval is not None and number < self.minval:
            raise ValidationError(f"Must be at least {self.minval} (or blank), was {self.value_text}", self)
        if self.maxval is not None and number > self.maxval:
            raise ValidationError(f"Must be at most {self.maxval} (or blank), was {self.value_text}", self)


class MaskArtifacts(ImageSegmentation):
    category = "Image Segmentation"

    module_name = "MaskArtifacts"

    variable_revision_number = 2

    def create_settings(self):
        super().create_settings()

        self.x_name.text = "Select the brightfield image"
        self.x_name.doc = (
            "Select the brightfield image to search for artifacts, as acquired (not filtered). The ArtSeg engine "
            "normalises intensities itself (the image's own quartiles or percentiles), so CellProfiler's scaling to "
            "[0, 1] or any other linear rescaling does not change the result."
        )

        self.y_name.value = "Artifacts"
        self.y_name.text = "Name the artifact objects"
        self.y_name.doc = (
            "Name of the objects made from the artifact mask (one object per connected artifact region). "
            "Use them in **MaskObjects**, **MaskImage**, **RelateObjects** or **MeasureObjectSizeShape**."
        )

        self.model_directory = Directory(
            "Model file location",
            dir_choices=[
                DEFAULT_INPUT_FOLDER_NAME,
                DEFAULT_OUTPUT_FOLDER_NAME,
                ABSOLUTE_FOLDER_NAME,
                DEFAULT_INPUT_SUBFOLDER_NAME,
                DEFAULT_OUTPUT_SUBFOLDER_NAME,
            ],
            allow_metadata=False,
            doc="Folder that holds the ArtSeg model file (made with ``artseg train``).",
        )

        def get_directory_fn():
            return self.model_directory.get_absolute_path()

        def set_directory_fn(path):
            dir_choice, custom_path = self.model_directory.get_parts_from_path(path)
            self.model_directory.join_parts(dir_choice, custom_path)

        self.model_file_name = Filename(
            "Model file name",
            DEFAULT_MODEL_FILE,
            get_directory_fn=get_directory_fn,
            set_directory_fn=set_directory_fn,
            browse_msg="Choose an ArtSeg model file",
            exts=[("ArtSeg model file (*.artseg)", "*.artseg"), ("All files (*.*)", "*.*")],
            doc="File name of the ArtSeg model (``.artseg``).",
        )

        self.use_gate = Binary(
            "Skip clean images with the classifier?",
            True,
            doc=(
                "If *Yes*, the pixel-level segmentation runs only on images the classifier does not judge "
                "confidently clean (faster on mostly clean plates). If *No*, every image is segmented."
            ),
        )

        self.threshold = OptionalNumber(
            "Probability threshold (blank = model's calibrated value)",
            "",
            minval=0.0,
            maxval=1.0,
            doc=(
                "Pixels whose artifact probability reaches this value are artifact pixels. Leave blank to use "
                "the threshold calibrated when the model was trained."
            ),
        )

        self.min_size = OptionalNumber(
            "Minimum artifact size in pixels (blank = model's calibrated value)",
            "",
            minval=0,
            integer=True,
            doc="Artifact regions smaller than this area (pixels) are dropped. Leave blank for the model's value.",
        )

        self.divider = Divider()

        self.wants_mask_image = Binary(
            "Save the artifact mask as an image?",
            False,
            doc="If *Yes*, the binary artifact mask is added to the image set for later modules.",
        )

        self.mask_image_name = ImageName(
            "Name the artifact mask image",
            "ArtifactMask",
            doc="Name of the binary mask image (artifact pixels are 1).",
        )

        self.wants_cleaned_image = Binary(
            "Save an image with the artifacts filled in?",
            False,
            doc="If *Yes*, a copy of the input with artifact pixels replaced is added to the image set.",
        )

        self.cleaned_image_name = ImageName(
            "Name the cleaned image",
            "CleanedImage",
            doc="Name of the image with artifact pixels filled.",
        )

        self.fill_method = Choice(
            "Fill method",
            list(FILL_METHODS),
            FILL_MEDIAN,
            doc=(
                f"*{FILL_MEDIAN}*: each artifact pixel takes the median of nearby clean pixels. "
                f"*{FILL_BACKGROUND}*: a smooth (2nd-order polynomial) background fitted to the clean pixels, plus "
                "noise matched to the clean pixels."
            ),
        )

        self.device = Choice(
            "Compute device",
            list(DEVICES),
            DEVICE_AUTO,
            doc=f"*{DEVICE_AUTO}* uses a GPU when PyTorch sees one, else the CPU.",
        )

        self.wants_probability_image = Binary(
            "Save the artifact probability map as an image?",
            False,
            doc=(
                "If *Yes*, the U-Net's per-pixel artifact probability (0 to 1) is added to the image set, e.g. "
                "to threshold it yourself with **Threshold** or to view it. Images the classifier judged clean "
                "are not segmented: their probability map is all 0."
            ),
        )

        self.probability_image_name = ImageName(
            "Name the probability image",
            "ArtifactProbability",
            doc="Name of the probability image (values 0 to 1).",
        )

        self.torch_threads = Integer(
            "CPU threads per CellProfiler worker (0 = automatic)",
            0,
            minval=0,
            doc=(
                "Threads PyTorch may use in each CellProfiler process. CellProfiler's analysis starts several "
                "worker processes; if each let PyTorch use every core, the cores would be oversubscribed and the "
                "run slower. *0* (automatic): in an analysis worker, the number of cores divided by "
                "CellProfiler's *Maximum number of workers* preference (at least 1); in a single-process "
                "headless run (``cellprofiler -c -r``), all cores."
            ),
        )

    def settings(self):
        return [
            self.x_name,
            self.y_name,
            self.model_directory,
            self.model_file_name,
            self.use_gate,
            self.threshold,
            self.min_size,
            self.wants_mask_image,
            self.mask_image_name,
            self.wants_cleaned_image,
            self.cleaned_image_name,
            self.fill_method,
            self.device,
            self.wants_probability_image,
            self.probability_image_name,
            self.torch_threads,
        ]

    def visible_settings(self):
        result = [
            self.x_name,
            self.y_name,
            self.model_directory,
            self.model_file_name,
            self.use_gate,
            self.threshold,
            self.min_size,
            self.divider,
            self.wants_mask_image,
        ]
        if self.wants_mask_image.value:
            result.append(self.mask_image_name)
        result.append(self.wants_cleaned_image)
        if self.wants_cleaned_image.value:
            result += [self.cleaned_image_name, self.fill_method]
        result.append(self.wants_probability_image)
        if self.wants_probability_image.value:
            result.append(self.probability_image_name)
        result += [self.device, self.torch_threads]
        return result

    def volumetric(self):
        return False

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        expected = N_SETTINGS_BY_REVISION.get(variable_revision_number)
        if expected is None:
            raise ValueError(
                f"MaskArtifacts settings revision {variable_revision_number} is newer than this plugin "
                f"(revision {self.variable_revision_number}): update the ArtSeg plugin"
            )
        if len(setting_values) != expected:
            raise ValueError(
                f"MaskArtifacts (settings revision {variable_revision_number}) has {expected} settings, the "
                f"pipeline gives {len(setting_values)}: edit the pipeline or re-create the module"
            )
        if variable_revision_number == 1:
            setting_values = list(setting_values) + REVISION_2_DEFAULTS
            variable_revision_number = 2
        return setting_values, variable_revision_number

    # ----------------------------------------------------------------------------------------------
    # Model file
    # ----------------------------------------------------------------------------------------------

    def model_path(self) -> str:
        """Absolute path of the model file named by the settings."""
        return os.path.join(self.model_directory.get_absolute_path(), self.model_file_name.value)

    def get_model(self):
        """The cached ArtSeg model (ModelUnavailableError with a clear message if it cannot be used)."""
        return load_model_cached(self.model_path(), DEVICES[self.device.value])

    def validate_module(self, pipeline):
        others = [m for m in pipeline.modules() if m.module_name == self.module_name and m is not self]
        if others:
            raise ValidationError(
                "Only one MaskArtifacts module per pipeline: its image measurements "
                f"({C_MASK_ARTIFACTS}_Probability, ...) would clash",
                self.x_name,
            )
        names = [(self.wants_mask_image, self.mask_image_name), (self.wants_cleaned_image, self.cleaned_image_name),
                 (self.wants_probability_image, self.probability_image_name)]
        chosen = [name for wants, name in names if wants.value]
        for i, name in enumerate(chosen):
            if any(name.value == other.value for other in chosen[:i]):
                raise ValidationError(f"The output images need different names ('{name.value}' is used twice)",
                                      name)
        try:
            self.get_model()
        except ModelUnavailableError as exc:
            raise ValidationError(str(exc), self.model_file_name)

    def prepare_run(self, workspace):
        # Headless CellProfiler does not call validate_module: fail here, before any image is read, with the
        # module's own message in the log (the exception then stops the run and the CLI exits non-zero).
        try:
            self.get_model()
        except ModelUnavailableError as exc:
            LOGGER.error("%s", exc)
            raise
        return True

    def prepare_to_create_batch(self, workspace, fn_alter_path):
        self.model_directory.alter_for_create_batch_files(fn_alter_path)
        return True

    # ----------------------------------------------------------------------------------------------
    # Running
    # ----------------------------------------------------------------------------------------------

    def run(self, workspace):
        image = workspace.image_set.get_image(self.x_name.value, must_be_grayscale=True)
        if image.volumetric:
            raise ValueError(f"MaskArtifacts works on 2-D images; {self.x_name.value} is a 3-D stack")
        pixels = image.pixel_data
        try:
            model = self.get_model()
        except ModelUnavailableError as exc:
            LOGGER.error("%s", exc)
            raise
        threads = self.torch_threads.value or automatic_torch_threads()
        if _THREADS_SET != [threads]:
            cap_torch_threads(threads)
        fill = FILL_METHODS[self.fill_method.value] if self.wants_cleaned_image.value else None
        # The raw array goes to the engine unchanged: it normalises by the image's own quartiles or
        # percentiles, so CellProfiler's [0, 1] scaling does not matter.
        result = model.predict(
            pixels,
            gate=self.use_gate.value,
            threshold=self.threshold.get_number(),
            min_size=self.min_size.get_number(),
            fill=fill,
        )

        labels = numpy.asarray(result.labels, dtype=numpy.int32)
        objects = Objects()
        objects.segmented = labels
        objects.parent_image = image
        workspace.object_set.add_objects(objects, self.y_name.value)
        self.add_measurements(workspace)

        measurements = workspace.measurements
        values = {
            FTR_PROBABILITY: float(result.p_artifact),
            FTR_FLAGGED: int(bool(result.flagged)),
            FTR_AREA_FRACTION: float(result.area_fraction),
            FTR_SEGMENTED: int(bool(result.segmented)),
        }
        for feature, key, coltype in QUALITY_FEATURES:
            value = result.quality[key]
            values[feature] = int(bool(value)) if coltype == COLTYPE_INTEGER else float(value)
        for feature, value in values.items():
            measurements.add_image_measurement(f"{C_MASK_ARTIFACTS}_{feature}", value)

        if self.wants_mask_image.value:
            mask_image = Image(numpy.asarray(result.mask, dtype=bool), parent_image=image)
            workspace.image_set.add(self.mask_image_name.value, mask_image)
        if self.wants_cleaned_image.value:
            cleaned = numpy.asarray(result.cleaned, dtype=numpy.float32)
            if pixels.min() >= 0 and pixels.max() <= 1:  # keep CellProfiler's [0, 1] convention
                cleaned = numpy.clip(cleaned, 0.0, 1.0)
            workspace.image_set.add(self.cleaned_image_name.value, Image(cleaned, parent_image=image))
        if self.wants_probability_image.value:
            prob = (numpy.zeros(pixels.shape, numpy.float32) if result.prob is None
                    else numpy.clip(numpy.asarray(result.prob, dtype=numpy.float32), 0.0, 1.0))
            workspace.image_set.add(self.probability_image_name.value, Image(prob, parent_image=image))

        if self.show_window:
            workspace.display_data.x_data = pixels
            workspace.display_data.y_data = labels
            workspace.display_data.dimensions = image.dimensions
            workspace.display_data.summary = (
                f"p(artifact)={values[FTR_PROBABILITY]:.2f}, {int(labels.max())} objects, "
                f"{100 * values[FTR_AREA_FRACTION]:.1f}% of the image"
            )

    def display(self, workspace, figure):
        figure.set_subplots((2, 1), dimensions=workspace.display_data.dimensions)
        figure.subplot_imshow_grayscale(0, 0, workspace.display_data.x_data, title=self.x_name.value)
        figure.subplot_imshow_labels(
            1,
            0,
            workspace.display_data.y_data,
            sharexy=figure.subplot(0, 0),
            title=f"{self.y_name.value}: {workspace.display_data.summary}",
        )

    # ----------------------------------------------------------------------------------------------
    # Measurement declarations (ExportToSpreadsheet, FlagImage and the measurement pickers read these)
    # ----------------------------------------------------------------------------------------------

    def get_measurement_columns(self, pipeline, object_name=None):
        columns = super().get_measurement_columns(pipeline, object_name)
        columns += [(IMAGE, f"{C_MASK_ARTIFACTS}_{feature}", coltype) for feature, coltype in IMAGE_FEATURES]
        return columns

    def get_categories(self, pipeline, object_name):
        categories = super().get_categories(pipeline, object_name)
        if object_name == IMAGE:
            categories = categories + [C_MASK_ARTIFACTS]
        return categories

    def get_measurements(self, pipeline, object_name, category):
        if object_name == IMAGE and category == C_MASK_ARTIFACTS:
            return [feature for feature, _ in IMAGE_FEATURES]
        return super().get_measurements(pipeline, object_name, category)
