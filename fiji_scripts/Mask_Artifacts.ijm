// Mask Artifacts - ArtSeg for ImageJ 1.x and Fiji.
//
// Finds artifacts (dust, debris, fibres, bubbles, dead-cell clumps, ...) with the ArtSeg engine, which this
// macro runs as the `artseg` command line (artseg predict ... --roi), and then:
//   * adds the artifact outlines to the image as an Overlay (one ROI per artifact object; also in batch mode)
//     and, when ImageJ shows windows, to the ROI Manager;
//   * measures area and mean intensity inside and outside the artifacts;
//   * writes a CSV (one row per image) and optionally opens the mask and the cleaned image.
//
// Works on the active image, on one file (input=[...]) or on every image of a folder (folder=[...]).
// Called the same way from the command line, as a menu command and from other macros:
//   ImageJ -batch Mask_Artifacts.ijm "model=[/path/model.artseg] input=[/path/img.tif]"
//   run("Mask Artifacts", "model=[/path/model.artseg] folder=[/path/plate] output=[/path/out]");
//   runMacro("/path/Mask_Artifacts.ijm", "model=[/path/model.artseg]");
// Options (keys as in ImageJ's key=[value] syntax; all optional except model, which is remembered):
//   model=[file]      the ArtSeg model file (.artseg)
//   input=[file]      one image file            folder=[dir]  every image of a folder (not sub-folders)
//   output=[dir]      output folder (default: <image folder>/artseg_out, or <temp>/ArtSeg for unsaved images)
//   csv=[file]        the measurement CSV (default: <output>/artseg_imagej.csv)
//   cleaned=[none|median|background]   also write (and, with windows, open) the image with artifacts filled
//   threshold=[0..1] min_size=[pixels] pixel_size=[um] plane=[0-based]   passed on to the engine
//   no_gate           run the U-Net even on images the classifier finds clean
//   annotated         also save <name>_artseg.tif: the image with the outline overlay
//   artseg=[command]  how to call the engine (remembered); default: the file artseg_command.txt written by
//                     `artseg fiji-install` next to this macro, else `artseg` on the PATH
// After the call, other macros can read java.lang.System properties artseg.status ("ok" or "error"),
// artseg.error, artseg.csv and artseg.output with call("java.lang.System.getProperty", key).
// On any error the macro stops with exit("message") (a message box in the GUI, a printed line in batch mode).

var VERSION = "0.1.0";
var ENGINE_CSV_NAME = "artseg_results.csv";
var opts = "";
var model = "";
var artsegCmd = "";
var outDir = "";
var cleaned = "none";
var annotated = false;
var wasBatch = false;
var engineHeader = newArray(0);
var nFlagged = 0;
var lastRoiZip = "";
var nFailed = 0;
var firstError = "";
var activeMode = false;

main();

function main() {
    wasBatch = is("Batch Mode");
    dummy = call("java.lang.System.setProperty", "artseg.status", "running");
    dummy = call("java.lang.System.setProperty", "artseg.error", "");
    opts = getArgument();
    if (opts == "") {
        o = "" + call("ij.Macro.getOptions");  // (a null result would become the number 0 without "" +)
        if (o != "null") opts = o;
    }
    opts = " " + String.trim(opts) + " ";
    if (String.trim(opts) == "") {
        if (wasBatch) fail("no options given: pass at least model=[path/to/model.artseg]");
        showOptionsDialog();
    }
    model = opt("model", call("ij.Prefs.get", "artseg.model", ""));
    if (model == "") fail("no model given: pass model=[path/to/model.artseg]");
    dummy = call("ij.Prefs.set", "artseg.model", model);
    artsegCmd = findArtsegCommand();
    cleaned = toLowerCase(opt("cleaned", "none"));
    if (cleaned != "none" && cleaned != "median" && cleaned != "background")
        fail("cleaned must be none, median or background, not '" + cleaned + "'");
    annotated = flag("annotated");
    input = opt("input", "");
    folder = opt("folder", "");
    if (input != "" && folder != "") fail("give input=[file] or folder=[dir], not both");

    setBatchMode(true);
    if (folder != "") runFolder(folder);
    else if (input != "") runFile(input);
    else runActiveImage();
}

// ------------------------------------------------------------------------------------------------ modes

function runActiveImage() {
    if (nImages == 0) fail("no image is open: open an image, or pass input=[file] or folder=[dir]");
    origID = getImageID();
    title = getTitle();
    dir = getInfo("image.directory");
    if (dir != "") outDir = opt("output", dir + "artseg_out");
    else outDir = opt("output", getDirectory("temp") + "ArtSeg");
    outDir = withSep(outDir);
    ok = File.makeDirectory(outDir);
    if (!File.isDirectory(outDir)) fail("cannot create the output folder " + outDir);
    name = safeName(stem(title));
    tmpDir = withSep(getDirectory("temp") + "artseg_" + getTime());
    ok = File.makeDirectory(tmpDir);
    tmp = tmpDir + name + ".tif";
    // the current plane, without the user's selection (Duplicate would crop to it; it is put back at the end)
    userRoi = "";
    if (selectionType() != -1) {
        userRoi = tmpDir + "selection.roi";
        saveAs("Selection", userRoi);
        run("Select None");
    }
    run("Duplicate...", "title=artseg_input");
    saveAs("Tiff", tmp);
    close();
    selectImage(origID);
    if (userRoi != "") open(userRoi);
    activeMode = true;
    engineCsv = runEngine(tmp, "");
    rows = readLines(engineCsv);
    if (rows.length < 2) fail("the engine wrote no result for " + title + " (" + engineCsv + ")");
    line = processRow(rows[1], name, origID, title);
    selectImage(origID);
    if (userRoi != "") {
        open(userRoi);
        ok = File.delete(userRoi);
    }
    ok = File.delete(tmp);
    ok = File.delete(tmpDir);
    finish(newArray(line), true, origID, name);
}

function runFile(path) {
    if (!File.exists(path) || File.isDirectory(path)) fail("input file not found: " + path);
    outDir = withSep(opt("output", File.getParent(path) + File.separator + "artseg_out"));
    engineCsv = runEngine(path, "");
    rows = readLines(engineCsv);
    if (rows.length < 2) fail("the engine wrote no result for " + path + " (" + engineCsv + ")");
    name = stem(File.getName(path));
    line = processRow(rows[1], name, 0, "");
    finish(newArray(line), !wasBatch, 0, name);
}

function runFolder(folder) {
    if (!File.isDirectory(folder)) fail("input folder not found: " + folder);
    folder = withSep(folder);
    outDir = withSep(opt("output", folder + "artseg_out"));
    engineCsv = runEngine(folder, "");
    rows = readLines(engineCsv);
    n = rows.length - 1;
    if (n < 1) fail("the engine found no images in " + folder + " (.tif .tiff .png .jpg .jpeg)");
    paths = newArray(n);
    for (i = 0; i < n; i++) paths[i] = field(parseCsvLine(rows[i + 1]), "image");
    names = uniqueNames(paths);
    lines = newArray(n);
    for (i = 0; i < n; i++) {
        showProgress(i, n);
        lines[i] = processRow(rows[i + 1], names[i], 0, "");
    }
    finish(lines, false, 0, "");
}

// ------------------------------------------------------------------------------------------------ engine

// Runs `artseg predict INPUT ... --roi` into outDir; returns the engine's CSV path or stops with its message.
function runEngine(input, extra) {
    ok = File.makeDirectory(outDir);
    if (!File.isDirectory(outDir)) fail("cannot create the output folder " + outDir);
    engineCsv = outDir + ENGINE_CSV_NAME;
    if (File.exists(engineCsv)) ok = File.delete(engineCsv);
    a = newArray("predict", input, "--model", model, "--out", outDir, "--csv", engineCsv, "--roi", "--quiet");
    if (cleaned != "none") a = Array.concat(a, newArray("--cleaned", cleaned));
    if (flag("no_gate")) a = Array.concat(a, newArray("--no-gate"));
    keys = newArray("threshold", "min_size", "pixel_size", "plane");
    clis = newArray("--threshold", "--min-size", "--pixel-size", "--plane");
    n = keys.length;
    if (activeMode) n = 3;  // the active image is sent as its current plane only
    for (k = 0; k < n; k++) {
        v = opt(keys[k], "");
        if (v != "") {
            if (isNaN(parseFloat(v))) fail(keys[k] + " must be a number, not '" + v + "'");
            a = Array.concat(a, newArray(clis[k], v));
        }
    }
    marker = "__ARTSEG_EXIT__=";
    if (startsWith(getInfo("os.name"), "Windows")) {
        cmdline = artsegCmd;
        for (i = 0; i < a.length; i++) cmdline = cmdline + " \"" + a[i] + "\"";
        output = exec("cmd", "/v:on", "/c", cmdline + " 2>&1 & echo " + marker + "!errorlevel!");
    } else {
        cmdline = artsegCmd;
        for (i = 0; i < a.length; i++) cmdline = cmdline + " " + shQuote(a[i]);
        output = exec("sh", "-c", cmdline + " </dev/null 2>&1; echo " + marker + "$?");
    }
    code = -1;
    at = lastIndexOf(output, marker);
    if (at >= 0) {
        code = parseInt(String.trim(substring(output, at + lengthOf(marker))));
        output = substring(output, 0, at);
    }
    output = String.trim(output);
    if (code != 0 && !File.exists(engineCsv)) {
        msg = "the ArtSeg engine failed (exit status " + code + ")";
        if (code == 126 || code == 127)
            msg = msg + ": could not run `" + artsegCmd + "`. Install ArtSeg (pip install artseg), then run "
                + "`artseg fiji-install <ImageJ or Fiji folder>`, or pass artseg=[/path/to/artseg]";
        fail(msg + "\n" + output);
    }
    if (!File.exists(engineCsv)) fail("the ArtSeg engine wrote no results (" + engineCsv + ")\n" + output);
    return engineCsv;
}

// ------------------------------------------------------------------------------------------------ per image

// Opens (or uses) the image of one engine CSV row, measures inside/outside the mask, adds the outlines;
// returns the output CSV line.
function processRow(row, name, origID, origTitle) {
    f = parseCsvLine(row);
    image = field(f, "image");
    status = field(f, "status");
    if (origTitle != "") shown = origTitle;
    else shown = image;
    // (an expression that starts with a user function is numeric in the macro language: start with "")
    base = "" + csvQuote(shown) + "," + csvQuote(field(f, "status")) + "," + field(f, "p_artifact") + ","
        + field(f, "flagged") + "," + field(f, "n_objects") + "," + field(f, "area_fraction");
    if (status != "ok") {
        noteError(shown + ": " + field(f, "error"));
        return base + ",,,,,,,,,," + csvQuote(field(f, "error"));
    }
    if (toLowerCase(field(f, "flagged")) == "true") nFlagged++;
    maskPath = outDir + name + "_mask.tif";
    roiPath = outDir + name + "_rois.zip";
    if (!File.exists(maskPath)) return errorLine(base, "the engine wrote no mask " + maskPath);
    opened = false;
    if (origID == 0) {
        if (!File.exists(image)) return errorLine(base, "image not found: " + image);
        open(image);
        origID = getImageID();
        opened = true;
        plane = opt("plane", "");
        if (plane != "" && nSlices > 1) setSlice(parseInt(plane) + 1);
    }
    selectImage(origID);
    w = getWidth();
    h = getHeight();
    getPixelSize(unit, pw, ph);
    if (String.trim(unit) == "") unit = "pixel";
    open(maskPath);
    maskID = getImageID();
    if (getWidth() != w || getHeight() != h) {
        close();
        return errorLine(base, "mask size " + getWidth() + "x" + getHeight() + " differs from the image " + w + "x" + h);
    }
    getHistogram(values, counts, 256);
    nIn = counts[255];
    nOut = w * h - nIn;
    roiManager("reset");
    if (nIn > 0) {
        // the artifact pixels as one selection, moved to the image through the ROI Manager
        setThreshold(255, 255);
        run("Create Selection");
        roiManager("add");
    }
    close();
    selectImage(origID);
    run("Select None");
    inArea = 0; inMean = NaN; outArea = 0; outMean = NaN;
    if (nIn > 0) {
        roiManager("select", 0);
        List.setMeasurements;
        inArea = List.getValue("Area");
        inMean = List.getValue("Mean");
        if (nOut > 0) {
            run("Make Inverse");
            List.setMeasurements;
            outArea = List.getValue("Area");
            outMean = List.getValue("Mean");
        }
    } else {
        List.setMeasurements;
        outArea = List.getValue("Area");
        outMean = List.getValue("Mean");
    }
    run("Select None");
    roiManager("reset");
    nRois = addOutlines(origID, roiPath, parseInt(field(f, "n_objects")));
    if (annotated) {
        selectImage(origID);
        nOverlay = Overlay.size;
        run("Duplicate...", "title=artseg_annotated");
        dupID = getImageID();
        if (Overlay.size == 0 && nOverlay > 0) {
            selectImage(origID);
            Overlay.copy;
            selectImage(dupID);
            Overlay.paste;
        }
        selectImage(dupID);
        saveAs("Tiff", outDir + name + "_artseg.tif");
        close();
    }
    if (opened) {
        selectImage(origID);
        close();
    }
    return base + "," + nRois + "," + nIn + "," + num(inArea) + "," + num(inMean) + "," + nOut + ","
        + num(outArea) + "," + num(outMean) + "," + csvQuote(unit) + "," + csvQuote(maskPath) + ",";
}

// Adds the engine's ROIs (<name>_rois.zip) to the image's overlay; returns how many.
function addOutlines(imageID, roiPath, nObjects) {
    selectImage(imageID);
    // remove outlines of an earlier run
    for (i = Overlay.size - 1; i >= 0; i--) {
        Overlay.activateSelection(i);
        if (startsWith(getInfo("selection.name"), "artifact-")) Overlay.removeSelection(i);
    }
    run("Select None");
    if (nObjects == 0 || !File.exists(roiPath)) return 0;
    roiManager("reset");
    roiManager("Open", roiPath);
    n = roiManager("count");
    selectImage(imageID);
    for (i = 0; i < n; i++) {
        roiManager("select", i);  // keeps its name from the zip: artifact-001, ... as in every ArtSeg output
        Overlay.addSelection("yellow");
    }
    run("Select None");
    roiManager("reset");
    lastRoiZip = roiPath;
    return n;
}

// Writes the CSV, shows results when ImageJ has windows, reports failed images.
function finish(lines, show, origID, name) {
    csvPath = opt("csv", outDir + "artseg_imagej.csv");
    header = "image,status,p_artifact,flagged,n_objects,area_fraction,n_rois,inside_area_px,inside_area,"
        + "inside_mean,outside_area_px,outside_area,outside_mean,area_unit,mask,error";
    text = header + "\n";
    for (i = 0; i < lines.length; i++) text = text + lines[i] + "\n";
    ok = File.saveString(text, csvPath);
    dummy = call("java.lang.System.setProperty", "artseg.csv", csvPath);
    dummy = call("java.lang.System.setProperty", "artseg.output", outDir);
    if (show && !wasBatch && name != "") {
        maskPath = outDir + name + "_mask.tif";
        if (File.exists(maskPath)) open(maskPath);
        cleanedPath = outDir + name + "_cleaned.tif";
        if (cleaned != "none" && File.exists(cleanedPath)) open(cleanedPath);
        if (origID != 0) selectImage(origID);
    }
    if (!wasBatch) {
        setBatchMode("exit and display");
        if (origID != 0) selectImage(origID);
        if (show && lastRoiZip != "" && File.exists(lastRoiZip)) {
            roiManager("reset");
            roiManager("Open", lastRoiZip);
        }
    }
    print("ArtSeg: " + lines.length + " image(s), " + nFlagged + " flagged, " + nFailed + " failed; results: " + csvPath);
    if (nFailed > 0) fail("" + nFailed + " of " + lines.length + " image(s) failed (see " + csvPath + "); first: " + firstError);
    dummy = call("java.lang.System.setProperty", "artseg.status", "ok");
}

// ------------------------------------------------------------------------------------------------ options

function opt(key, default) {
    return call("ij.Macro.getValue", opts, key, default);
}

function flag(key) {
    if (indexOf(opts, " " + key + " ") >= 0) return true;
    return false;
}

function findArtsegCommand() {
    cmd = opt("artseg", "");
    if (cmd != "") {
        dummy = call("ij.Prefs.set", "artseg.command", cmd);
        return cmd;
    }
    cmd = call("ij.Prefs.get", "artseg.command", "");
    if (cmd != "") return cmd;
    candidates = newArray("", "", "");
    fp = getInfo("macro.filepath");
    if (fp != "" && fp != "null") candidates[0] = File.getParent(fp) + File.separator + "artseg_command.txt";
    if (getDirectory("plugins") != "") candidates[1] = getDirectory("plugins") + "ArtSeg" + File.separator + "artseg_command.txt";
    if (getDirectory("imagej") != "")
        candidates[2] = getDirectory("imagej") + "scripts" + File.separator + "Plugins" + File.separator + "ArtSeg"
            + File.separator + "artseg_command.txt";
    for (i = 0; i < candidates.length; i++) {
        if (candidates[i] != "" && File.exists(candidates[i])) {
            lines = split(File.openAsString(candidates[i]), "\n");
            for (j = 0; j < lines.length; j++) {
                s = String.trim(lines[j]);
                if (s != "" && !startsWith(s, "#")) return s;
            }
        }
    }
    return "artseg";
}

function showOptionsDialog() {
    Dialog.create("Mask Artifacts (ArtSeg " + VERSION + ")");
    Dialog.addFile("Model file (.artseg)", call("ij.Prefs.get", "artseg.model", ""));
    Dialog.addDirectory("Output folder (empty: next to the image)", "");
    Dialog.addChoice("Cleaned image", newArray("none", "median", "background"), "none");
    Dialog.addCheckbox("Annotated TIFF (image + outlines)", false);
    Dialog.addString("Threshold (empty: the model's)", "");
    Dialog.addMessage("Runs on the active image. From a macro: input=[file] or folder=[dir].");
    Dialog.show();
    o = "model=[" + Dialog.getString() + "]";
    d = Dialog.getString();
    if (d != "") o = o + " output=[" + d + "]";
    o = o + " cleaned=" + Dialog.getChoice();
    if (Dialog.getCheckbox()) o = o + " annotated";
    t = Dialog.getString();
    if (t != "") o = o + " threshold=" + t;
    opts = " " + o + " ";
}

// ------------------------------------------------------------------------------------------------ helpers

function fail(msg) {
    dummy = call("java.lang.System.setProperty", "artseg.status", "error");
    dummy = call("java.lang.System.setProperty", "artseg.error", msg);
    if (!wasBatch && is("Batch Mode")) setBatchMode(false);
    exit("Mask Artifacts: " + msg);
}

function noteError(message) {
    nFailed++;
    if (firstError == "") firstError = message;
}

function errorLine(base, message) {
    noteError(message);
    // replace the status field ("ok") of base by "error"
    i = indexOf(base, ",\"ok\",");
    if (i >= 0) base = substring(base, 0, i) + ",\"error\"," + substring(base, i + 6);
    return base + ",,,,,,,,,," + csvQuote(message);
}

function num(v) {
    if (isNaN(v)) return "NaN";
    return d2s(v, 6);
}

function withSep(d) {
    if (endsWith(d, "/") || endsWith(d, File.separator)) return d;
    return d + File.separator;
}

// Python's pathlib stem: the name without its last suffix
function stem(name) {
    i = lastIndexOf(name, ".");
    if (i > 0 && i < lengthOf(name) - 1) return substring(name, 0, i);
    return name;
}

function safeName(s) {
    out = "";
    for (i = 0; i < lengthOf(s); i++) {
        c = substring(s, i, i + 1);
        if (matches(c, "[A-Za-z0-9._-]")) out = out + c;
        else out = out + "_";
    }
    if (out == "") out = "image";
    return out;
}

// The engine's output names (artseg_core.predict_files.unique_names): the stem, with the parent folder's name
// when stems collide, then _1, _2 ... for what still collides.
function uniqueNames(paths) {
    n = paths.length;
    s = newArray(n);
    for (i = 0; i < n; i++) s[i] = stem(File.getName(paths[i]));
    t = newArray(n);
    for (i = 0; i < n; i++) {
        count = 0;
        for (j = 0; j < n; j++) if (s[j] == s[i]) count++;
        if (count > 1) t[i] = File.getName(File.getParent(paths[i])) + "_" + s[i];
        else t[i] = s[i];
    }
    out = newArray(n);
    for (i = 0; i < n; i++) {
        k = 0;
        for (j = 0; j < i; j++) if (t[j] == t[i]) k++;
        if (k == 0) out[i] = t[i];
        else out[i] = t[i] + "_" + k;
    }
    return out;
}

function shQuote(s) {
    out = "'";
    for (i = 0; i < lengthOf(s); i++) {
        c = substring(s, i, i + 1);
        if (c == "'") out = out + "'\\''";
        else out = out + c;
    }
    return out + "'";
}

function csvQuote(s) {
    out = "\"";
    for (i = 0; i < lengthOf(s); i++) {
        c = substring(s, i, i + 1);
        if (c == "\"") out = out + "\"\"";
        else if (c == "\n" || c == "\r") out = out + " ";
        else out = out + c;
    }
    return out + "\"";
}

function readLines(path) {
    text = File.openAsString(path);
    lines = split(text, "\n");
    out = newArray(0);
    for (i = 0; i < lines.length; i++) {
        l = lines[i];
        if (endsWith(l, "\r")) l = substring(l, 0, lengthOf(l) - 1);
        if (l != "") out = Array.concat(out, newArray(l));
    }
    if (out.length > 0) engineHeader = parseCsvLine(out[0]);
    return out;
}

// One CSV line (RFC 4180 quoting, no embedded newlines) -> array of fields
function parseCsvLine(line) {
    fields = newArray(0);
    cur = "";
    inQuotes = false;
    n = lengthOf(line);
    i = 0;
    while (i < n) {
        c = substring(line, i, i + 1);
        if (inQuotes) {
            if (c == "\"") {
                next = "";  // (&& does not short-circuit in the macro language)
                if (i + 1 < n) next = substring(line, i + 1, i + 2);
                if (next == "\"") {
                    cur = cur + "\"";
                    i++;
                } else inQuotes = false;
            } else cur = cur + c;
        } else if (c == "\"") inQuotes = true;
        else if (c == ",") {
            fields = Array.concat(fields, newArray(cur));
            cur = "";
        } else cur = cur + c;
        i++;
    }
    return Array.concat(fields, newArray(cur));
}

function field(fields, column) {
    for (i = 0; i < engineHeader.length; i++)
        if (engineHeader[i] == column) {
            if (i < fields.length) return fields[i];
            return "";
        }
    fail("the engine's CSV has no column '" + column + "'");
}
