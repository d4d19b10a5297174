// flowscope's dashboards: Antrea's six Grafana Flow Collector dashboards, drawn with plotly.js.
// State lives in the address's fragment (#d=<dashboard>&range=3600&f={...}), so a view can be
// bookmarked and a link from one dashboard opens another with its filters.
"use strict";

const TOKEN_KEY = "flowscope-token";
const state = { dashboards: [], byId: {}, timer: null, loading: false };

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function takeTokenFromAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    history.replaceState(null, "", "#" + params.toString());
  }
}

function view() {
  const params = new URLSearchParams(location.hash.slice(1));
  let filters = {};
  try {
    filters = JSON.parse(params.get("f") || "{}");
  } catch (error) {
    filters = {};
  }
  return {
    dashboard: params.get("d") || "flow_records",
    range: params.get("range") || "3600",
    from: params.get("from"),
    to: params.get("to"),
    filters: filters && typeof filters === "object" ? filters : {},
  };
}

function go(changes) {
  const current = view();
  const next = Object.assign(current, changes);
  const params = new URLSearchParams();
  params.set("d", next.dashboard);
  params.set("range", next.range);
  if (next.range === "custom") {
    params.set("from", next.from);
    params.set("to", next.to);
  }
  if (Object.keys(next.filters).length) params.set("f", JSON.stringify(next.filters));
  location.hash = params.toString();
}

function timeRange(current) {
  if (current.range === "custom" && current.from && current.to) {
    return [Number(current.from), Number(current.to)];
  }
  const now = Math.floor(Date.now() / 1000);
  return [now - Number(current.range || 3600), now];
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (response.status === 401) {
    showLogin();
    throw new Error("the API needs its token");
  }
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new Error(text || response.statusText);
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("token").focus();
}

function message(text) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function formatValue(value, unit) {
  if (typeof value !== "number") return String(value);
  const steps = unit === "bps" ? ["bps", "Kbps", "Mbps", "Gbps", "Tbps"] : unit === "bytes" ? ["B", "KB", "MB", "GB", "TB"] : null;
  if (!steps) return value.toLocaleString();
  let index = 0;
  while (Math.abs(value) >= 1000 && index < steps.length - 1) {
    value /= 1000;
    index += 1;
  }
  return (index ? value.toFixed(1) : String(Math.round(value))) + " " + steps[index];
}

function label(row, columns, names) {
  // namespace/name, and service-port-name:port as Antrea writes them
  let text = "";
  for (const name of names) {
    const part = row[columns.indexOf(name)];
    if (part === "" || part === null || part === 0) continue;
    text += (text ? (name.endsWith("Port") ? ":" : "/") : "") + part;
  }
  return text || "(none)";
}

function keyFilters(row, columns, names) {
  const filters = {};
  for (const name of names) filters[name] = String(row[columns.indexOf(name)]);
  return filters;
}

function recordsLink(filters) {
  const current = view();
  const link = el("a", { href: "#", class: "records-link", text: "flow records →" });
  link.addEventListener("click", (event) => {
    event.preventDefault();
    go({ dashboard: "flow_records", filters: Object.assign({}, current.filters, filters) });
  });
  return link;
}

function linkTable(rows, describe) {
  const table = el("table", { class: "links" });
  for (const row of rows.slice(0, 10)) {
    const [text, filters, value] = describe(row);
    table.append(el("tr", {}, el("td", { text }), el("td", { class: "number", text: value }), el("td", {}, recordsLink(filters))));
  }
  return table;
}

const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
const VERDICT_COLORS = { allowed: "#16a34a", denied: "#dc2626", "no policy": "#9ca3af" };
const PLOT_LAYOUT = { margin: { l: 50, r: 10, t: 10, b: 30 }, height: 300, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { size: 11 } };
const PLOT_CONFIG = { displaylogo: false, responsive: true };

function draw(panel, data, body) {
  const { columns, rows } = data;
  if (!rows.length) {
    body.append(el("p", { class: "empty", text: "No data in this time range." }));
    return;
  }
  const value = columns.indexOf("value");
  if (panel.kind === "stat") {
    body.append(el("div", { class: "stat", text: formatValue(rows[0][0], panel.unit) }));
  } else if (panel.kind === "table") {
    drawTable(columns, rows, body);
  } else if (panel.kind === "sankey") {
    const nodes = [];
    const index = {};
    const node = (side, text) => {
      const key = side + text;
      if (!(key in index)) {
        index[key] = nodes.length;
        nodes.push(text);
      }
      return index[key];
    };
    const links = { source: [], target: [], value: [], color: [] };
    for (const row of rows) {
      const from = node("s", label(row, columns, panel.source));
      links.source.push(from);
      links.target.push(node("t", label(row, columns, panel.target)));
      links.value.push(row[value]);
      links.color.push(PALETTE[from % PALETTE.length] + "66");
    }
    const chart = el("div", { class: "chart" });
    body.append(chart);
    const colors = nodes.map((_, position) => PALETTE[position % PALETTE.length]);
    Plotly.newPlot(chart, [{ type: "sankey", node: { label: nodes, pad: 12, color: colors }, link: links }], PLOT_LAYOUT, PLOT_CONFIG);
    body.append(linkTable(rows, (row) => [
      label(row, columns, panel.source) + " → " + label(row, columns, panel.target),
      keyFilters(row, columns, [...panel.source, ...panel.target]),
      formatValue(row[value], panel.unit),
    ]));
  } else if (panel.kind === "timeseries") {
    const time = columns.indexOf("time");
    const lines = new Map();
    for (const row of rows) {
      const name = label(row, columns, panel.series);
      if (!lines.has(name)) lines.set(name, { x: [], y: [], row });
      const line = lines.get(name);
      line.x.push(new Date(row[time] * 1000));
      line.y.push(row[value]);
    }
    const chart = el("div", { class: "chart" });
    body.append(chart);
    const traces = [...lines.entries()].slice(0, 20).map(([name, line]) => ({ type: "scatter", mode: "lines", name, x: line.x, y: line.y }));
    Plotly.newPlot(chart, traces, Object.assign({}, PLOT_LAYOUT, { yaxis: { title: { text: panel.unit } }, showlegend: true, legend: { orientation: "h" } }), PLOT_CONFIG);
    body.append(linkTable([...lines.values()].map((line) => line.row), (row) => [
      label(row, columns, panel.series), keyFilters(row, columns, panel.series), "",
    ]));
  } else if (panel.kind === "pie") {
    const chart = el("div", { class: "chart" });
    body.append(chart);
    const labels = rows.map((row) => label(row, columns, panel.label));
    const marker = panel.label[0] === "verdict" ? { colors: labels.map((text) => VERDICT_COLORS[text] || "#9ca3af") } : { colors: PALETTE };
    Plotly.newPlot(chart, [{ type: "pie", labels, values: rows.map((row) => row[value]), hole: 0.4, marker, sort: false }], PLOT_LAYOUT, PLOT_CONFIG);
    if (panel.label[0] !== "verdict") {
      body.append(linkTable(rows, (row) => [label(row, columns, panel.label), keyFilters(row, columns, panel.label), formatValue(row[value], panel.unit)]));
    }
  }
}

function drawTable(columns, rows, body) {
  const filters = columns.map(() => "");
  const count = el("p", { class: "count" });
  const table = el("table", { class: "records" });
  const head = el("thead");
  const names = el("tr");
  const inputs = el("tr", { class: "column-filters" });
  const tbody = el("tbody");
  columns.forEach((name, position) => {
    names.append(el("th", { text: name }));
    const input = el("input", { placeholder: "filter", "aria-label": "filter " + name, "data-column": name });
    input.addEventListener("input", () => {
      filters[position] = input.value.toLowerCase();
      fill();
    });
    inputs.append(el("th", {}, input));
  });
  head.append(names, inputs);
  table.append(head, tbody);
  const time = columns.indexOf("flowEndSeconds");
  function fill() {
    tbody.replaceChildren();
    const shown = rows.filter((row) => row.every((cell, position) => !filters[position] || String(cell).toLowerCase().includes(filters[position])));
    for (const row of shown.slice(0, 1000)) {
      tbody.append(el("tr", {}, ...row.map((cell, position) => el("td", { text: position === time ? new Date(cell * 1000).toISOString().replace("T", " ").slice(0, 19) : String(cell) }))));
    }
    count.textContent = shown.length.toLocaleString() + " of " + rows.length.toLocaleString() + " rows" + (shown.length > 1000 ? " (the first 1,000 shown)" : "");
  }
  fill();
  body.append(count, el("div", { class: "table-wrap" }, table));
}

function renderTabs(current) {
  const tabs = document.getElementById("tabs");
  tabs.replaceChildren(...state.dashboards.map((dashboard) => {
    const tab = el("a", { href: "#", text: dashboard.title, class: dashboard.id === current.dashboard ? "tab active" : "tab", "data-dashboard": dashboard.id });
    tab.addEventListener("click", (event) => {
      event.preventDefault();
      go({ dashboard: dashboard.id });
    });
    return tab;
  }));
}

function renderFilters(current) {
  const box = document.getElementById("filters");
  box.replaceChildren(...Object.entries(current.filters).map(([key, value]) => {
    const chip = el("span", { class: "chip", text: key + " = " + value + " " });
    chip.append(el("button", { type: "button", "aria-label": "remove filter " + key, text: "×", onclick: () => {
      const filters = Object.assign({}, current.filters);
      delete filters[key];
      go({ filters });
    } }));
    return chip;
  }));
}

async function load() {
  if (state.loading) return;
  const current = view();
  const dashboard = state.byId[current.dashboard] || state.dashboards[0];
  if (!dashboard) return;
  renderTabs(current);
  renderFilters(current);
  document.getElementById("range").value = current.range;
  document.getElementById("custom").hidden = current.range !== "custom";
  const [start, end] = timeRange(current);
  if (current.range === "custom") {
    document.getElementById("from").value = toInput(start);
    document.getElementById("to").value = toInput(end);
  }
  const query = new URLSearchParams({ from: start, to: end, filters: JSON.stringify(current.filters) });
  state.loading = true;
  document.getElementById("status").textContent = "loading…";
  let answer;
  try {
    answer = await api("/ui/api/data/" + dashboard.id + "?" + query);
  } catch (error) {
    message("Cannot show " + dashboard.title + ": " + error.message);
    document.getElementById("status").textContent = "";
    return;
  } finally {
    state.loading = false;
  }
  message("");
  const main = document.getElementById("dashboard");
  main.replaceChildren(el("h1", { text: dashboard.title }), el("p", { class: "description", text: dashboard.description }));
  const grid = el("div", { class: "grid" });
  main.append(grid);
  for (const panel of dashboard.panels) {
    const data = answer.panels[panel.id];
    const body = el("div", { class: "panel-body" });
    const box = el("section", { class: "panel " + panel.kind, "data-panel": panel.id }, el("h2", { text: panel.title }), body);
    grid.append(box);
    if (data.error) {
      body.append(el("p", { class: "error", text: data.error }));
      continue;
    }
    if (data.ignored) body.append(el("p", { class: "note", text: "Filters not applicable here: " + data.ignored.join(", ") }));
    draw(panel, data, body);
  }
  const shown = new Date(start * 1000).toLocaleString() + " – " + new Date(end * 1000).toLocaleString();
  document.getElementById("status").textContent = shown;
}

function schedule() {
  clearInterval(state.timer);
  const seconds = Number(document.getElementById("refresh").value);
  if (seconds > 0) state.timer = setInterval(load, seconds * 1000);
}

function toInput(seconds) {
  const date = new Date(seconds * 1000);
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
}

function setup() {
  takeTokenFromAddress();
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    document.getElementById("login").hidden = true;
    begin();
  });
  document.getElementById("range").addEventListener("change", (event) => {
    if (event.target.value === "custom") {
      const [from, to] = timeRange(view());
      document.getElementById("from").value = toInput(from);
      document.getElementById("to").value = toInput(to);
      go({ range: "custom", from, to });
    } else {
      go({ range: event.target.value });
    }
  });
  for (const id of ["from", "to"]) {
    document.getElementById(id).addEventListener("change", () => {
      const from = Math.floor(new Date(document.getElementById("from").value).getTime() / 1000);
      const to = Math.floor(new Date(document.getElementById("to").value).getTime() / 1000);
      go({ range: "custom", from, to });
    });
  }
  document.getElementById("refresh").addEventListener("change", schedule);
  document.getElementById("reload").addEventListener("click", load);
  document.getElementById("add-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("filter-key").value.trim();
    const value = document.getElementById("filter-value").value.trim();
    if (!key) return;
    go({ filters: Object.assign({}, view().filters, { [key]: value }) });
  });
  window.addEventListener("hashchange", load);
  begin();
}

async function begin() {
  let listing;
  try {
    listing = await api("/ui/api/dashboards");
  } catch (error) {
    message("Cannot load the dashboards: " + error.message);
    return;
  }
  state.dashboards = listing.dashboards;
  state.byId = Object.fromEntries(listing.dashboards.map((dashboard) => [dashboard.id, dashboard]));
  document.getElementById("filter-keys").replaceChildren(...listing.columns.map((name) => el("option", { value: name })));
  message("");
  schedule();
  await load();
}

setup();
