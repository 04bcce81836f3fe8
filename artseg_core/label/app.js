// ArtSeg label: the page. Plain JavaScript; talks to artseg_core/label/server.py.
"use strict";
(function () {
  const TOKEN = document.body.dataset.token;
  const $ = (id) => document.getElementById(id);
  const api = (path, params) => {
    const q = new URLSearchParams(params || {});
    q.set("token", TOKEN);
    return path + "?" + q.toString();
  };

  const A = (window.artseg = {
    fields: [], idx: 0, mode: "label", pending: 0, errors: 0, masksDir: null, maskMaxSide: 4096,
    maskReady: false, maskDirty: false,
  });

  // ------------------------------------------------------------------ status, saving queue
  function status(msg, isError) {
    const s = $("status");
    s.textContent = msg;
    s.className = isError ? "error" : "";
  }
  let chain = Promise.resolve();
  function enqueue(fn) { // requests leave in the order of the keys pressed
    A.pending++;
    chain = chain.then(fn).then(
      () => { if (A.pending === 1 && $("status").textContent.startsWith("saving")) status("saved"); },
      (e) => { A.errors++; status("not saved: " + e.message, true); })
      .finally(() => { A.pending--; });
    return chain;
  }
  async function post(path, params, body, type) {
    const r = await fetch(api(path, params), { method: "POST", body: body,
      headers: { "Content-Type": type || "application/json" } });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(j.error || r.statusText);
    return j;
  }

  // ------------------------------------------------------------------ label mode
  function counts() {
    const n = A.fields.length, k = A.fields.filter((f) => f.label).length;
    $("count").textContent = k + " / " + n + " labelled";
    $("progress").max = n; $("progress").value = k;
  }
  function preload(i) {
    if (i >= 0 && i < A.fields.length) new Image().src = api("api/image", { name: A.fields[i].name, max: 1600 });
  }
  function showField() {
    const f = A.fields[A.idx];
    if (!f) return;
    $("field-pos").textContent = "field " + (A.idx + 1) + " of " + A.fields.length;
    $("field-name").textContent = f.name;
    const b = $("field-label");
    b.textContent = f.label || "no label";
    b.className = "badge " + (f.label || "");
    $("guess").textContent = f.guess ? "model: " + f.guess + " (p = " + f.p_artifact.toFixed(2) + ")" : "";
    const img = $("field-img");
    const src = api("api/image", { name: f.name, max: 1600 });
    if (img.dataset.name !== f.name) { img.src = src; img.dataset.name = f.name; }
    $("done").hidden = A.fields.some((g) => !g.label) ? true : false;
    counts();
    preload(A.idx + 1); preload(A.idx + 2);
  }
  function go(i) {
    A.idx = Math.max(0, Math.min(A.fields.length - 1, i));
    showField();
  }
  function answer(label) {
    const f = A.fields[A.idx];
    if (!f) return;
    f.label = label;
    const body = JSON.stringify({ name: f.name, label: label });
    status("saving…");
    enqueue(() => post("api/label", {}, body));
    if (label && A.idx < A.fields.length - 1) go(A.idx + 1); else showField();
  }

  // ------------------------------------------------------------------ grid
  function showGrid() {
    const g = $("grid");
    if (g.childElementCount !== A.fields.length) {
      g.innerHTML = "";
      A.fields.forEach((f, i) => {
        const t = document.createElement("div");
        t.className = "tile"; t.dataset.name = f.name; t.dataset.i = i;
        const im = document.createElement("img");
        im.loading = "lazy"; im.alt = f.name; im.src = api("api/image", { name: f.name, max: 192 });
        const s = document.createElement("span"); s.textContent = f.name;
        t.append(im, s);
        t.addEventListener("click", () => { A.idx = i; setMode("label"); });
        g.append(t);
      });
    }
    for (const t of g.children) {
      const f = A.fields[+t.dataset.i];
      t.className = "tile " + (f.label || "") + (+t.dataset.i === A.idx ? " current" : "");
    }
    counts();
  }

  // ------------------------------------------------------------------ mask editor
  const M = (A.mask = { img: null, mask: null, scale: 1, ox: 0, oy: 0, tool: "brush", size: 20, undo: [],
    poly: [], drawing: false, panning: false, last: null, overlay: true, space: false, cursor: null });
  const cv = $("mask-canvas");
  const ctx = cv.getContext("2d");

  function loadImage(src) {
    return new Promise((ok, bad) => {
      const im = new Image();
      im.onload = () => ok(im);
      im.onerror = () => bad(new Error("could not load " + src));
      im.src = src;
    });
  }
  async function openMask() {
    const f = A.fields[A.idx];
    A.maskReady = false; A.maskDirty = false;
    $("mask-name").textContent = f.name;
    status("loading mask…");
    const q = { name: f.name, max: A.maskMaxSide };
    const [im, r] = await Promise.all([loadImage(api("api/image", q)), fetch(api("api/mask", q))]);
    if (!r.ok) throw new Error("mask: " + r.statusText);
    const src = r.headers.get("X-ArtSeg-Mask-Source");
    const mim = await loadImage(URL.createObjectURL(await r.blob()));
    M.img = im;
    M.mask = document.createElement("canvas");
    M.mask.width = im.naturalWidth; M.mask.height = im.naturalHeight;
    M.mctx = M.mask.getContext("2d", { willReadFrequently: true });
    M.mctx.drawImage(mim, 0, 0);
    M.undo = []; M.poly = []; M.name = f.name;
    $("mask-source").textContent = { saved: "saved mask", model: "model's mask", empty: "empty mask" }[src] || "";
    fit();
    A.maskReady = true;
    status(A.masksDir ? "mask of " + f.name : "no --masks folder: drawing cannot be saved", !A.masksDir);
  }
  function resizeCanvas() {
    const r = cv.getBoundingClientRect();
    if (cv.width !== Math.round(r.width) || cv.height !== Math.round(r.height)) {
      cv.width = Math.round(r.width); cv.height = Math.round(r.height);
    }
  }
  function fit() {
    if (!M.img) return;
    resizeCanvas();
    const w = M.mask.width, h = M.mask.height;
    M.scale = Math.min(cv.width / w, cv.height / h);
    M.ox = (cv.width - w * M.scale) / 2; M.oy = (cv.height - h * M.scale) / 2;
    render();
  }
  function render() {
    if (!M.img) return;
    resizeCanvas();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cv.width, cv.height);
    ctx.setTransform(M.scale, 0, 0, M.scale, M.ox, M.oy);
    ctx.imageSmoothingEnabled = M.scale < 1;
    ctx.drawImage(M.img, 0, 0);
    if (M.overlay) { ctx.globalAlpha = 0.45; ctx.drawImage(M.mask, 0, 0); ctx.globalAlpha = 1; }
    ctx.lineWidth = 1.5 / M.scale;
    if (M.poly.length) {
      ctx.strokeStyle = "#ffeb3b";
      ctx.beginPath();
      M.poly.forEach((p, i) => (i ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1])));
      if (M.cursor) ctx.lineTo(M.cursor[0], M.cursor[1]);
      ctx.stroke();
    }
    if (M.cursor && M.tool !== "polygon") {
      ctx.strokeStyle = M.tool === "eraser" ? "#80d8ff" : "#ffeb3b";
      ctx.beginPath(); ctx.arc(M.cursor[0], M.cursor[1], M.size / 2, 0, 2 * Math.PI); ctx.stroke();
    }
  }
  function toImage(ev) {
    const r = cv.getBoundingClientRect();
    return [(ev.clientX - r.left - M.ox) / M.scale, (ev.clientY - r.top - M.oy) / M.scale];
  }
  A.imageToClient = (x, y) => { // for scripts and tests: where image pixel (x, y) is on the screen
    const r = cv.getBoundingClientRect();
    return [r.left + M.ox + x * M.scale, r.top + M.oy + y * M.scale];
  };
  function snapshot() {
    M.undo.push(M.mctx.getImageData(0, 0, M.mask.width, M.mask.height));
    const cap = Math.max(3, Math.floor(400e6 / (4 * M.mask.width * M.mask.height)));
    while (M.undo.length > cap) M.undo.shift();
    A.maskDirty = true;
  }
  function undo() {
    const d = M.undo.pop();
    if (d) { M.mctx.putImageData(d, 0, 0); render(); status("undone"); }
  }
  function paintStyle(erase) {
    M.mctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    M.mctx.fillStyle = M.mctx.strokeStyle = "rgb(255,0,0)";
  }
  function stroke(a, b) {
    paintStyle(M.tool === "eraser");
    M.mctx.lineCap = M.mctx.lineJoin = "round";
    M.mctx.lineWidth = M.size;
    M.mctx.beginPath(); M.mctx.moveTo(a[0], a[1]); M.mctx.lineTo(b[0], b[1]); M.mctx.stroke();
    M.mctx.beginPath(); M.mctx.arc(b[0], b[1], M.size / 2, 0, 2 * Math.PI); M.mctx.fill();
  }
  function closePolygon(erase) {
    if (M.poly.length < 3) { M.poly = []; render(); return; }
    snapshot();
    paintStyle(erase);
    M.mctx.beginPath();
    M.poly.forEach((p, i) => (i ? M.mctx.lineTo(p[0], p[1]) : M.mctx.moveTo(p[0], p[1])));
    M.mctx.closePath(); M.mctx.fill();
    M.poly = []; render();
  }
  function setTool(t) {
    if (t !== "polygon") M.poly = [];
    M.tool = t;
    for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === t);
    render();
  }
  function setSize(s) {
    M.size = Math.max(1, Math.min(200, Math.round(s)));
    $("brush-size").value = M.size; $("brush-size-v").textContent = M.size;
    render();
  }
  function zoomAt(cx, cy, k) {
    const r = cv.getBoundingClientRect(), x = cx - r.left, y = cy - r.top;
    const s = Math.max(0.02, Math.min(64, M.scale * k));
    M.ox = x - (x - M.ox) * (s / M.scale); M.oy = y - (y - M.oy) * (s / M.scale); M.scale = s;
    render();
  }
  async function saveMask() {
    if (!M.mask) return;
    if (!A.masksDir) { status("no --masks folder: restart artseg label with --masks DIR", true); return; }
    const blob = await new Promise((ok) => M.mask.toBlob(ok, "image/png"));
    status("saving mask…");
    A.errors = 0;
    await enqueue(async () => {
      const j = await post("api/mask", { name: M.name }, blob, "image/png");
      A.maskDirty = false;
      status("saved " + j.path);
    });
  }
  cv.addEventListener("contextmenu", (ev) => ev.preventDefault());
  cv.addEventListener("mousedown", (ev) => {
    if (!A.maskReady) return;
    const p = toImage(ev);
    if (ev.button === 1 || ev.button === 2 || M.space) {
      M.panning = true; M.last = [ev.clientX, ev.clientY]; return;
    }
    if (ev.button !== 0) return;
    if (M.tool === "polygon") {
      M.poly.push(p); render(); return;
    }
    snapshot();
    M.drawing = true; M.last = p; stroke(p, p); render();
  });
  cv.addEventListener("mousemove", (ev) => {
    const p = toImage(ev);
    M.cursor = p;
    if (M.panning) {
      M.ox += ev.clientX - M.last[0]; M.oy += ev.clientY - M.last[1]; M.last = [ev.clientX, ev.clientY];
    } else if (M.drawing) {
      stroke(M.last, p); M.last = p;
    }
    render();
  });
  window.addEventListener("mouseup", () => { M.drawing = false; M.panning = false; });
  cv.addEventListener("dblclick", (ev) => { if (M.tool === "polygon") { M.poly.pop(); closePolygon(ev.shiftKey); } });
  cv.addEventListener("wheel", (ev) => { ev.preventDefault(); zoomAt(ev.clientX, ev.clientY, ev.deltaY < 0 ? 1.25 : 0.8); },
    { passive: false });
  window.addEventListener("resize", () => { if (A.mode === "mask") render(); });
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("brush-size").addEventListener("input", (ev) => setSize(+ev.target.value));
  $("undo").addEventListener("click", undo);
  $("fit").addEventListener("click", fit);
  $("save").addEventListener("click", saveMask);

  // ------------------------------------------------------------------ modes and keys
  function setMode(m) {
    A.mode = m;
    $("label-view").hidden = m !== "label";
    $("grid-view").hidden = m !== "grid";
    $("mask-view").hidden = m !== "mask";
    for (const [id, mm] of [["to-label", "label"], ["to-grid", "grid"], ["to-mask", "mask"]]) {
      $(id).classList.toggle("active", m === mm);
    }
    if (m === "label") showField();
    if (m === "grid") showGrid();
    if (m === "mask") openMask().catch((e) => status(e.message, true));
  }
  // A clicked button gives the focus back, so that Space and Enter keep meaning skip and fill, not "click again".
  document.addEventListener("click", (ev) => { const b = ev.target.closest("button"); if (b) b.blur(); });
  $("to-label").addEventListener("click", () => setMode("label"));
  $("to-grid").addEventListener("click", () => setMode("grid"));
  $("to-mask").addEventListener("click", () => setMode("mask"));

  window.addEventListener("keyup", (ev) => { if (ev.key === " ") M.space = false; });
  window.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" && ev.target.type !== "range") return;
    const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (A.mode === "mask") {
      if ((ev.ctrlKey || ev.metaKey) && k === "z") { ev.preventDefault(); undo(); return; }
      if ((ev.ctrlKey || ev.metaKey) && k === "s") { ev.preventDefault(); saveMask(); return; }
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const acts = {
        b: () => setTool("brush"), e: () => setTool("eraser"), p: () => setTool("polygon"), z: undo, s: saveMask,
        f: fit, o: () => { M.overlay = !M.overlay; render(); }, "[": () => setSize(M.size / 1.25),
        "]": () => setSize(M.size * 1.25 + 1), "+": () => zoomAt(innerWidth / 2, innerHeight / 2, 1.25),
        "-": () => zoomAt(innerWidth / 2, innerHeight / 2, 0.8), " ": () => { M.space = true; },
        Enter: () => closePolygon(ev.shiftKey), g: () => setMode("grid"), l: () => setMode("label"),
        Escape: () => (M.poly.length ? ((M.poly = []), render()) : setMode("label")),
      };
      if (acts[k]) { ev.preventDefault(); acts[k](); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (A.mode === "grid") {
      const acts = { l: () => setMode("label"), Escape: () => setMode("label"), m: () => setMode("mask") };
      if (acts[k]) { ev.preventDefault(); acts[k](); }
      return;
    }
    const acts = {
      c: () => answer("clean"), 1: () => answer("clean"), a: () => answer("artifact"), 2: () => answer("artifact"),
      s: () => go(A.idx + 1), " ": () => go(A.idx + 1), ArrowRight: () => go(A.idx + 1),
      b: () => go(A.idx - 1), ArrowLeft: () => go(A.idx - 1), Backspace: () => go(A.idx - 1),
      x: () => answer(null), Delete: () => answer(null), g: () => setMode("grid"), m: () => setMode("mask"),
    };
    if (acts[k]) { ev.preventDefault(); acts[k](); }
  });

  // ------------------------------------------------------------------ start
  fetch(api("api/state")).then((r) => {
    if (!r.ok) throw new Error("cannot read the session: " + r.statusText);
    return r.json();
  }).then((st) => {
    A.fields = st.fields; A.masksDir = st.masks_dir; A.maskMaxSide = st.mask_max_side;
    // Resume where the last session stopped: the first field without a label after the last labelled one
    // (skipped fields are not recorded); with a model, whose order changes as it is retrained, the least
    // certain field without a label.
    let last = -1;
    A.fields.forEach((f, i) => { if (f.label) last = i; });
    let next = A.fields.findIndex((f, i) => i > last && !f.label);
    if (st.model || next < 0) next = A.fields.findIndex((f) => !f.label);
    A.idx = next >= 0 ? next : 0;
    setMode("label");
    setTool("brush");
    A.ready = true;
    status(st.n_labelled ? "resumed: " + st.n_labelled + " labelled in " + st.labels_path : st.labels_path);
  }).catch((e) => status(e.message, true));
})();
