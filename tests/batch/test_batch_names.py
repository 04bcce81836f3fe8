"""Plate runner: file-name conventions and plate inputs -> image list (no model needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from artseg_core.batch.manifest import ManifestError, build_manifest
from artseg_core.batch.platenames import (
    channel_matches,
    looks_brightfield,
    parse_name,
    row_index,
    row_letters,
    split_well,
    well_name,
)


def _img(path: Path, value: int = 0) -> Path:
    """A tiny valid TIFF (content differs per file so nothing is constant)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) + value)
    tifffile.imwrite(path, a)
    return path


@pytest.mark.parametrize("name, plate, well, row, col, field, channel, plane, conv", [
    ("r02c05f134p01-ch1sk1fk1fl1.tiff", "P7", "B05", 2, 5, 134, "1", 1, "operetta"),
    ("r16c24f01p03-ch2sk1fk1fl1.tiff", "P7", "P24", 16, 24, 1, "2", 3, "operetta"),
    ("PL1_A01_s1_w1.tif", "PL1", "A01", 1, 1, 1, "1", None, "imagexpress"),
    ("B12_s3_w2_3F2504E0-4F89-11D3-9A0C-0305E82C3301.tif", "P7", "B12", 2, 12, 3, "2", None, "imagexpress"),
    ("Plate 7_H12_w3.TIF", "Plate 7", "H12", 8, 12, None, "3", None, "imagexpress"),
    ("AF48_s2_w1_z3.tif", "P7", "AF48", 32, 48, 2, "1", 3, "imagexpress"),
    ("A1_01_1_1_Bright Field_001.tif", "P7", "A01", 1, 1, 1, "Bright Field", None, "gen5"),
    ("C10_02_2_4_GFP_001.tif", "P7", "C10", 3, 10, 4, "GFP", None, "gen5"),
    ("A1ROI1_02_1_2_Bright Field_High Contrast_003.tif", "P7", "A01", 1, 1, 2, "Bright Field_High Contrast",
     None, "gen5"),
])
def test_conventions(name, plate, well, row, col, field, channel, plane, conv):
    n = parse_name(Path("/data/P7/Images") / name, root="/data/P7")
    assert (n.plate, n.well, n.row, n.col, n.field, n.channel, n.plane, n.convention) == \
        (plate, well, row, col, field, channel, plane, conv)


def test_operetta_timepoint_and_aliases():
    n = parse_name("/x/r02c05f134p01-ch1sk7fk1fl1.tiff")
    assert n.timepoint == 7
    assert channel_matches(n, "1") and channel_matches(n, "ch1") and channel_matches(n, "01")
    assert not channel_matches(n, "2")


def test_gen5_channel_by_name_or_index():
    n = parse_name("/x/A1_01_2_1_Bright Field_001.tif")
    assert channel_matches(n, "bright field") and channel_matches(n, "Bright_Field") and channel_matches(n, "2")
    assert not channel_matches(n, "1")


def test_imagexpress_thumbnail_skipped_and_unknown_names():
    assert parse_name("/x/A01_s1_w1_thumb.tif").skip
    n = parse_name("/x/P/notes_scan.tif", root="/x/P")
    assert n.convention == "none" and n.well == "" and n.plate == "P"


def test_user_regex():
    n = parse_name("/x/P/plateA/W_b3-f2-c5.tif", root="/x/P",
                   regex=r"(?P<plate>plate\w)/W_(?P<well>\w+)-f(?P<field>\d+)-c(?P<channel>\d)")
    assert (n.plate, n.well, n.field, n.channel, n.convention) == ("plateA", "B03", 2, "5", "regex")
    n = parse_name("/x/P/img_r3_c11_f7.tif", root="/x/P", regex=r"r(?P<row>\d+)_c(?P<col>\d+)_f(?P<field>\d+)")
    assert (n.well, n.row, n.col, n.field) == ("C11", 3, 11, 7)
    assert parse_name("/x/P/other.tif", root="/x/P", regex=r"W_(?P<well>\w+)") is None
    with pytest.raises(ValueError, match="named groups"):
        parse_name("/x/a.tif", regex=r"(\d+)")


def test_well_helpers():
    assert [row_letters(i) for i in (1, 26, 27, 32)] == ["A", "Z", "AA", "AF"]
    assert all(row_index(row_letters(i)) == i for i in range(1, 60))
    assert well_name(2, 5) == "B05" and split_well("b5") == (2, 5) and split_well("AF48") == (32, 48)
    with pytest.raises(ValueError, match="not a well"):
        split_well("5B")
    assert looks_brightfield("Bright Field") and looks_brightfield("BF") and looks_brightfield("Phase Contrast")
    assert not looks_brightfield("DAPI") and not looks_brightfield("GFP")


def test_folder_manifest_orders_by_plate_position_and_picks_channel(tmp_path):
    root = tmp_path / "plate"
    for w in ("B02", "A10", "A02"):
        for s in (2, 1, 10):
            for ch in (1, 2):
                _img(root / "images" / f"P_{w}_s{s}_w{ch}.tif", s + ch)
    _img(root / "images" / "P_A02_s1_w1_thumb.tif")
    with pytest.raises(ManifestError, match="several channels"):
        build_manifest(root)
    man = build_manifest(root, channel="w1")
    assert man.channel == "w1" and man.channels == ["1", "2"]
    got = [(t.name.well, t.name.field) for t in man.tasks]
    assert got == [("A02", 1), ("A02", 2), ("A02", 10), ("A10", 1), ("A10", 2), ("A10", 10),
                   ("B02", 1), ("B02", 2), ("B02", 10)]
    assert [t.index for t in man.tasks] == list(range(9))
    assert all(t.key.startswith("images/") and t.out_subdir == "images" for t in man.tasks)
    with pytest.raises(ManifestError, match="no image has channel '3'"):
        build_manifest(root, channel="3")


def test_brightfield_channel_chosen_automatically(tmp_path):
    for ch, name in ((1, "Bright Field"), (2, "DAPI")):
        _img(tmp_path / "gen5" / f"A1_01_{ch}_1_{name}_001.tif")
    man = build_manifest(tmp_path / "gen5")
    assert man.channel == "Bright Field" and len(man) == 1 and "Bright Field" in man.tasks[0].path


def test_glob_and_excluded_output_folder(tmp_path):
    for w in ("A01", "A02"):
        _img(tmp_path / "p" / f"X_{w}_s1_w1.tif")
    _img(tmp_path / "p" / "out" / "outputs" / "X_A01_s1_w1_mask.tif")
    man = build_manifest(str(tmp_path / "p" / "X_A0*_s1_w1.tif"))
    assert man.kind == "glob" and len(man) == 2
    man = build_manifest(tmp_path / "p", exclude=tmp_path / "p" / "out")
    assert [t.key for t in man.tasks] == ["X_A01_s1_w1.tif", "X_A02_s1_w1.tif"]


def test_same_names_in_two_folders_get_separate_output_folders(tmp_path):
    _img(tmp_path / "p" / "run1" / "A01_s1_w1.tif")
    _img(tmp_path / "p" / "run2" / "A01_s1_w1.tif", 5)
    man = build_manifest(tmp_path / "p")
    assert sorted(t.out_subdir for t in man.tasks) == ["run1", "run2"]
    assert {t.name.plate for t in man.tasks} == {"run1", "run2"}
    _img(tmp_path / "q" / "A01_s1_w1.tif")
    (tmp_path / "q" / "A01_s1_w1.png").write_bytes((tmp_path / "q" / "A01_s1_w1.tif").read_bytes())
    with pytest.raises(ManifestError, match="more than one file.*A01_s1_w1.png, A01_s1_w1.tif"):
        build_manifest(tmp_path / "q")
    with pytest.raises(ManifestError, match="same output files"):
        build_manifest(tmp_path / "q", allow_duplicates=True)


def test_csv_manifest_plain_with_metadata_override(tmp_path):
    a = _img(tmp_path / "imgs" / "one.tif")
    b = _img(tmp_path / "imgs" / "two.tif", 3)
    csv = tmp_path / "list.csv"
    csv.write_text("path,plate,well,site\nimgs/two.tif,PX,C4,2\n" + f"{a},PX,c04,1\n")
    man = build_manifest(csv)
    assert man.kind == "csv"
    assert [(t.name.plate, t.name.well, t.name.field) for t in man.tasks] == [("PX", "C04", 1), ("PX", "C04", 2)]
    assert man.tasks[1].path == str(b.resolve())
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nimgs/missing.tif\n")
    with pytest.raises(ManifestError, match="not found: .*missing.tif"):
        build_manifest(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name,x\na,1\n")
    with pytest.raises(ManifestError, match="needs a 'path' column"):
        build_manifest(nocol)


def test_cellprofiler_loaddata_csv(tmp_path):
    d = tmp_path / "imgs"
    rows = []
    for w, s in (("B02", 1), ("A01", 2), ("A01", 1)):
        _img(d / f"{w}_s{s}_w1.tif")
        _img(d / f"{w}_s{s}_w2.tif", 9)
        rows.append(f"{w}_s{s}_w1.tif,{d},{w}_s{s}_w2.tif,{d},Plate9,{w},{s}")
    csv = tmp_path / "load_data.csv"
    csv.write_text("FileName_DNA,PathName_DNA,FileName_BF,PathName_BF,Metadata_Plate,Metadata_Well,Metadata_Site\n"
                   + "\n".join(rows) + "\n")
    man = build_manifest(csv)  # BF says brightfield: chosen without --channel
    assert man.channel == "BF" and all(t.path.endswith("_w2.tif") for t in man.tasks)
    man = build_manifest(csv, channel="dna")
    assert man.kind == "loaddata" and man.channel == "DNA"
    assert [(t.name.plate, t.name.well, t.name.field) for t in man.tasks] == \
        [("Plate9", "A01", 1), ("Plate9", "A01", 2), ("Plate9", "B02", 1)]
    assert all(t.path.endswith("_w1.tif") for t in man.tasks)
    with pytest.raises(ManifestError, match="no channel 'GFP'"):
        build_manifest(csv, channel="GFP")
    csv.write_text(csv.read_text().replace("FileName_BF,PathName_BF", "FileName_GFP,PathName_GFP"))
    with pytest.raises(ManifestError, match="several channels"):
        build_manifest(csv)


def test_bad_inputs(tmp_path):
    with pytest.raises(ManifestError, match="no such folder"):
        build_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no images found"):
        build_manifest(tmp_path / "empty")
    with pytest.raises(ManifestError, match="name-regex"):
        build_manifest(tmp_path, name_regex="(?P<well")


def test_files_without_a_channel_go_with_the_chosen_one_and_nothing_is_dropped_silently(tmp_path):
    """Issue 15.3: one `_w1` file used to make every file without a channel disappear (1 of 3 processed)."""
    p = tmp_path / "mixed"
    _img(p / "A01_s1_w1.tif")
    _img(p / "B02_s1.tif", 1)
    _img(p / "sample.tif", 2)
    _img(p / "A01_s1_w2.tif", 3)
    man = build_manifest(p, channel="1")
    assert sorted(Path(t.path).name for t in man.tasks) == ["A01_s1_w1.tif", "B02_s1.tif", "sample.tif"]
    assert [(Path(f).name, why) for f, why in man.skipped] == [("A01_s1_w2.tif", "channel 2 (processing channel 1)")]
    # broken files next to two channel files: all reach the run (and fail there, reported)
    q = tmp_path / "broken"
    _img(q / "A01_s1_w1.tif")
    _img(q / "A02_s1_w1.tif", 1)
    (q / "junk1.tif").write_bytes(b"not a tiff")
    (q / "junk2.tif").write_bytes(b"")
    assert len(build_manifest(q)) == 4
    # a CSV manifest is processed as written, channels or not
    csv = tmp_path / "list.csv"
    csv.write_text("path\n" + "\n".join(str(p / n) for n in ("A01_s1_w1.tif", "B02_s1.tif", "A01_s1_w2.tif")) + "\n")
    assert len(build_manifest(csv)) == 3
    man = build_manifest(csv, channel="w1")
    assert len(man) == 2 and len(man.skipped) == 1


def test_mask_folders_skipped_and_duplicate_positions_refused(tmp_path):
    """Issue 16.2: a phantom plate root (images/, masks/, nuclei_masks/) listed every field three times."""
    from artseg_core.data import phantoms

    phantoms.make_plate(tmp_path / "pl", rows=1, cols=2, fields=2, prevalence=0.5, seed=1, shape=(64, 64))
    man = build_manifest(tmp_path / "pl", channel="1")
    assert len(man) == 4 and all(t.key.startswith("images/") for t in man.tasks)
    reasons = {Path(f).parent.name: why for f, why in man.skipped}
    assert set(reasons) == {"masks", "nuclei_masks", "nuclei"}
    assert "--include-derived" in reasons["masks"] and "channel 2" in reasons["nuclei"]
    with pytest.raises(ManifestError, match=r"4 plate position\(s\) have more than one file.*masks/"):
        build_manifest(tmp_path / "pl", channel="1", include_derived=True)
    assert len(build_manifest(tmp_path / "pl", channel="1", include_derived=True, allow_duplicates=True)) == 12
    # a plate run's output folder inside the plate is never read back
    out = tmp_path / "pl" / "images" / "run"
    out.mkdir()
    (out / "batch.json").write_text("{}")
    (out / "journal.jsonl").write_text("")
    _img(out / "outputs" / "P1_A01_s1_w1_mask.tif")
    man = build_manifest(tmp_path / "pl" / "images")
    assert len(man) == 4 and any("ArtSeg output folder" in why for _, why in man.skipped)
