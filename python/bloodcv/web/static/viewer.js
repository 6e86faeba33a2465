// The viewer: the image with its cells as an SVG overlay (zoomable, filterable by class); a reviewer clicks a
// cell to change its type, delete it or accept it, or draws a missed cell. Every change goes through the API
// (which keeps the audit trail) and the counts are redrawn from its answer.
(function () {
  const root = document.getElementById("viewer");
  const imageId = root.dataset.image;
  const canEdit = root.dataset.canEdit === "true";
  const types = JSON.parse(root.dataset.types);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const svg = document.getElementById("overlay");
  const stage = document.getElementById("stage");
  const NS = "http://www.w3.org/2000/svg";
  const palette = ["#e6194b", "#f58231", "#3cb44b", "#4363d8", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324", "#469990"];
  const fixed = { RBC: "#ff9fb2", Platelets: "#ffe119", WBC: "#ffffff", uncertain: "#9e9e9e" };
  const colour = (name) => fixed[name] || palette[Math.max(0, types.indexOf(name)) % palette.length];
  const classOf = (c) => (c.type ? c.type : c.label);
  let image = null, selected = null, zoom = 1, drawing = false;
  const hidden = new Set();

  async function api(method, url, body) {
    const response = await fetch(url, {
      method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.detail || response.statusText);
    return data;
  }

  async function load() {
    image = await api("GET", `/api/images/${imageId}`);
    document.getElementById("status").textContent =
      image.status === "done" ? `${image.cells.length} cells` + (image.reviewed ? " · reviewed" : "")
                              : image.status + (image.error ? `: ${image.error}` : "");
    if (image.status === "queued" || image.status === "running") { setTimeout(load, 1000); return; }
    if (image.status !== "done") return;
    drawFilters(); draw(); drawCounts();
    const m = location.hash.match(/^#cell-(\d+)$/);
    if (m && !selected) select(Number(m[1]));
    else if (selected) select(selected);
  }

  function drawFilters() {
    const names = [...new Set(image.cells.map(classOf))].sort();
    const box = document.getElementById("filters");
    box.innerHTML = "";
    for (const name of names) {
      const label = document.createElement("label");
      const input = Object.assign(document.createElement("input"), { type: "checkbox", checked: !hidden.has(name) });
      input.dataset.class = name;
      input.onchange = () => { input.checked ? hidden.delete(name) : hidden.add(name); draw(); };
      label.append(input, Object.assign(document.createElement("span"), { className: "swatch", style: `background:${colour(name)}` }), name);
      box.append(label);
    }
  }

  function draw() {
    svg.innerHTML = "";
    for (const c of image.cells) {
      const name = classOf(c);
      if (hidden.has(name)) continue;
      const [x1, y1, x2, y2] = c.box;
      const rect = document.createElementNS(NS, "rect");
      Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: colour(name) })
        .forEach(([k, v]) => rect.setAttribute(k, v));
      rect.setAttribute("class", "cell" + (c.uncertain ? " uncertain" : "") + (c.id === selected ? " selected" : ""));
      rect.dataset.id = c.id;
      rect.dataset.class = name;
      rect.addEventListener("click", (e) => { if (!drawing) { e.stopPropagation(); select(c.id); } });
      svg.append(rect);
      if (c.type) {
        const text = document.createElementNS(NS, "text");
        text.setAttribute("x", x1 + 3); text.setAttribute("y", Math.max(12, y1 - 4));
        text.textContent = c.type + (c.type_score != null && c.origin === "model" ? ` ${c.type_score.toFixed(2)}` : "");
        svg.append(text);
      }
    }
  }

  function drawCounts() {
    const counts = image.counts, d = image.differential;
    const rows = (obj) => Object.entries(obj).map(([k, v]) => `<tr><td><span class="swatch" style="background:${colour(k)}"></span>${k}</td><td>${v}</td></tr>`).join("");
    document.getElementById("counts").innerHTML =
      `<table id="label-counts">${rows(counts.labels)}</table><h3>Types</h3><table id="type-counts">${rows(counts.types) || "<tr><td>none</td></tr>"}</table>`;
    document.getElementById("differential").innerHTML = d.cells
      ? `<table id="differential-table">${types.map((t) => `<tr><td>${t}</td><td>${(d.percent[t] || 0).toFixed(1)} %</td></tr>`).join("")}</table>
         <p class="note">of ${d.cells} white cells${d.note ? "; " + d.note : ""}</p>`
      : `<p class="note">${d.note}</p>`;
  }

  async function select(id) {
    const c = image.cells.find((x) => x.id === id);
    if (!c) return;
    selected = id;
    draw();
    document.getElementById("cell-panel").hidden = false;
    document.getElementById("cell-id").textContent = c.id;
    const top = c.top3.map((t) => `${t.type} ${t.probability.toFixed(2)}`).join(", ");
    document.getElementById("cell-info").innerHTML =
      `<p>${c.label}, detector score ${c.score.toFixed(2)} (${c.origin})<br>type: <b id="cell-type-now">${c.type || "–"}</b>` +
      (top ? `<br>top 3: ${top}` : "") + (c.entropy != null ? `<br>entropy ${c.entropy.toFixed(2)}` : "") +
      (c.reviewed ? "<br>reviewed" : "") + "</p>";
    if (canEdit) {
      const select = document.getElementById("cell-type");
      select.innerHTML = ["", ...types, "uncertain"].map((t) => `<option value="${t}">${t || "(not typed)"}</option>`).join("");
      select.value = c.type || "";
    }
    const history = await api("GET", `/api/cells/${id}/history`);
    document.getElementById("cell-history").innerHTML = history.length
      ? "<h3>Changes</h3><ul>" + history.map((h) => `<li>${h.at.slice(0, 19).replace("T", " ")} ${h.user}: ${h.action}</li>`).join("") + "</ul>" : "";
  }

  async function change(body) {
    if (selected == null) return;
    try { await api("PATCH", `/api/cells/${selected}`, body); await load(); }
    catch (e) { alert(e.message); }
  }

  // Zoom resizes the image and the overlay (the SVG's viewBox keeps image pixels), so the page scrolls over it.
  const picture = document.getElementById("picture");
  function setZoom(z) {
    zoom = Math.min(8, Math.max(0.1, z));
    for (const el of [picture, svg]) {
      el.style.width = `${Number(root.dataset.width) * zoom}px`;
      el.style.height = `${Number(root.dataset.height) * zoom}px`;
    }
  }
  document.getElementById("zoom-in").onclick = () => setZoom(zoom * 1.25);
  document.getElementById("zoom-out").onclick = () => setZoom(zoom / 1.25);
  // fit: the whole image in the visible stage (its width, and 78 % of the window's height)
  const fit = () => setZoom(Math.min(stage.parentElement.clientWidth / Number(root.dataset.width),
                                     (0.78 * window.innerHeight - 8) / Number(root.dataset.height)));
  document.getElementById("zoom-fit").onclick = fit;
  stage.parentElement.addEventListener("wheel", (e) => { if (e.ctrlKey) { e.preventDefault(); setZoom(zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)); } });

  if (canEdit) {
    document.getElementById("cell-type").onchange = (e) => change({ type: e.target.value || null });
    document.getElementById("cell-delete").onclick = () => change({ deleted: true });
    document.getElementById("cell-accept").onclick = () => change({ reviewed: true });
    document.getElementById("mark-reviewed").onclick = async () => { await api("POST", `/api/images/${imageId}/reviewed`); await load(); };
    const drawButton = document.getElementById("draw");
    let start = null, ghost = null;
    const point = (e) => { const p = svg.createSVGPoint(); p.x = e.clientX; p.y = e.clientY; return p.matrixTransform(svg.getScreenCTM().inverse()); };
    drawButton.onclick = () => { drawing = !drawing; drawButton.classList.toggle("active", drawing); svg.classList.toggle("drawing", drawing); };
    svg.addEventListener("mousedown", (e) => {
      if (!drawing) return;
      start = point(e);
      ghost = document.createElementNS(NS, "rect");
      ghost.setAttribute("class", "cell selected"); ghost.setAttribute("stroke", "#fff");
      svg.append(ghost);
    });
    svg.addEventListener("mousemove", (e) => {
      if (!start) return;
      const p = point(e);
      ghost.setAttribute("x", Math.min(start.x, p.x)); ghost.setAttribute("y", Math.min(start.y, p.y));
      ghost.setAttribute("width", Math.abs(p.x - start.x)); ghost.setAttribute("height", Math.abs(p.y - start.y));
    });
    svg.addEventListener("mouseup", async (e) => {
      if (!start) return;
      const p = point(e), box = [Math.min(start.x, p.x), Math.min(start.y, p.y), Math.max(start.x, p.x), Math.max(start.y, p.y)];
      start = null;
      drawing = false; drawButton.classList.remove("active"); svg.classList.remove("drawing");
      if (box[2] - box[0] < 4 || box[3] - box[1] < 4) { ghost.remove(); return; }
      try { const cell = await api("POST", `/api/images/${imageId}/cells`, { box }); selected = cell.id; await load(); }
      catch (err) { alert(err.message); ghost.remove(); }
    });
  }
  fit();
  load();
})();
