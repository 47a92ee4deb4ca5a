// stockflow console: a client of the gateway's API, nothing more. No framework, no build step.
//
// The token lives in this tab's sessionStorage and travels only in the Authorization header,
// also for the live streams (read with fetch, not EventSource, so it is never in a URL).
// Every value from the API is put on the page as text (textContent), never as HTML.

const TOKEN_KEY = "stockflow.console.token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const timeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "medium",
});
const numberFormat = new Intl.NumberFormat();

/** What the signed-in token may do: { scope, scopes } from GET /v1/whoami. */
let session = null;
/** Aborts the current page's requests and live streams when the page changes. */
let pageAbort = new AbortController();
/** Countdown timers of the current page. */
let timers = [];

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

const num = (n) => (typeof n === "number" ? numberFormat.format(n) : "–");
const time = (ms) => (ms ? timeFormat.format(new Date(ms)) : "–");

/** A right-aligned number cell of fixed width; negative numbers stand out. */
function numCell(n, attrs = {}) {
  return h("td", { class: n < 0 ? "num negative" : "num", ...attrs }, num(n));
}

function table(headers, rows, caption) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          headers.map(([label, cls]) => h("th", { scope: "col", class: cls }, label)),
        ),
      ),
      rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows),
    ),
  );
}

const empty = (text) => h("p", { class: "empty" }, text);

/** Replaces `el`'s children, skipping the empty ones (null, undefined, false). */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function say(text) {
  const status = $("status");
  status.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => (status.textContent = ""), 5000);
}

function flash(el) {
  el.classList.remove("flash");
  void el.offsetWidth; // restart the animation
  el.classList.add("flash");
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

/** Interprets an answer: 401 signs out, 503 shows the banner; errors throw ApiError. */
async function answer(response) {
  let body = null;
  const type = response.headers.get("content-type") || "";
  if (type.startsWith("application/json")) body = await response.json();
  if (response.status === 401) {
    signOut("The token was refused: it is wrong, expired or withdrawn. Sign in again.");
    throw new ApiError(401, body);
  }
  if (response.status === 503) {
    showBanner(
      "stockflow cannot reach its message store or database right now (NATS or Redis). " +
        "What you see may be out of date; the page retries by itself.",
    );
    throw new ApiError(503, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  showBanner("");
  return body;
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: signal || pageAbort.signal,
      cache: "no-store",
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    showBanner("The gateway does not answer. Check the network; the page retries by itself.");
    throw new ApiError(0, { message: "the gateway does not answer" });
  }
  return answer(response);
}

/**
 * Follows a Server-Sent Events route with fetch (so the token goes in a header), calling
 * onEvent(name, data, id) per event. Reconnects after a pause until `signal` aborts; `onState`
 * hears "live" and "reconnecting". `lastId` resumes where the stream supports it.
 */
async function follow(path, { signal, onEvent, onState, resume = false }) {
  let lastId = null;
  let pause = 500;
  while (!signal.aborted) {
    try {
      const headers = {
        Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`,
        Accept: "text/event-stream",
      };
      if (resume && lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      if (!response.ok) await answer(response);
      onState("live");
      pause = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          let id = null;
          const data = [];
          for (const line of frame.split("\n")) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") name = text;
            else if (field === "data") data.push(text);
            else if (field === "id") id = text;
          }
          if (!data.length) continue;
          if (id) lastId = id;
          onEvent(name, JSON.parse(data.join("\n")), id);
        }
      }
    } catch (e) {
      if (signal.aborted || e.status === 401) return;
      // A request the gateway refuses (a bad SKU, a missing scope) will not get better.
      if (e.status >= 400 && e.status < 500) throw e;
    }
    if (signal.aborted) return;
    onState("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 10000);
  }
}

function liveBadge(el) {
  return (state) => {
    el.hidden = false;
    el.textContent = state === "live" ? "live" : "reconnecting…";
    el.classList.toggle("off", state !== "live");
  };
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

const isAdmin = () => session && session.scopes.includes("admin");

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  pageAbort.abort();
  document.body.dataset.scope = "";
  $("nav").hidden = true;
  $("who").hidden = true;
  for (const page of document.querySelectorAll(".page")) page.hidden = true;
  $("sign-in").hidden = false;
  const note = $("sign-in-reason");
  note.textContent = reason || "";
  note.hidden = !reason;
  $("token").value = "";
  $("token").focus();
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  const response = await fetch("/v1/whoami", {
    headers: { Authorization: `Bearer ${token}` },
    cache: "no-store",
  });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error("This token is not valid. Check it and try again.");
  }
  if (!response.ok) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error(`The gateway answered ${response.status}; try again in a moment.`);
  }
  session = await response.json();
  document.body.dataset.scope = session.scope;
  $("scope").textContent = `${session.scope} access`;
  $("scope").className = isAdmin() ? "badge warn" : "badge";
  $("sign-in").hidden = true;
  $("sign-in-reason").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  route();
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("sign-in-button");
  const error = $("sign-in-error");
  error.hidden = true;
  button.disabled = true;
  try {
    await signIn($("token").value.trim());
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", () => signOut(""));

// The skip link focuses the content without touching the hash, which holds the page.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});

// ---------------------------------------------------------------------------------------------
// Pages, by hash: #/stock/<sku>, #/alerts, #/orders/<id>, #/dead-letters, #/channels

const pages = {
  stock: stockPage,
  alerts: alertsPage,
  orders: ordersPage,
  "dead-letters": deadLettersPage,
  channels: channelsPage,
};

function route() {
  if (!session) return;
  pageAbort.abort();
  pageAbort = new AbortController();
  timers.forEach(clearInterval);
  timers = [];
  $("status").textContent = ""; // a note belongs to the page it was said on
  const [, name = "stock", ...rest] = location.hash.split("/");
  const page = pages[name] ? name : "stock";
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  for (const section of document.querySelectorAll(".page")) {
    section.hidden = section.id !== `page-${page}`;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  pages[page](arg, pageAbort.signal).catch((e) => {
    if (e.name !== "AbortError" && e.status !== 401) say(e.message);
  });
}

window.addEventListener("hashchange", route);

/** Shows `error` in `view` as a sentence a person can act on. */
function showError(view, e, what) {
  if (e.name === "AbortError" || e.status === 401) return;
  let text = `${what} could not be loaded: ${e.message}`;
  if (e.status === 403) text = `${what} need an admin token. Ask an administrator.`;
  if (e.status === 503) text = `${what} cannot be loaded while stockflow's stores are unreachable.`;
  fill(view, h("p", { class: "error", role: "alert" }, text));
}

// --- Stock ------------------------------------------------------------------------------------

$("sku-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const sku = $("sku").value.trim();
  if (sku) location.hash = `#/stock/${encodeURIComponent(sku)}`;
});

const LEVELS = [
  ["on_hand", "On hand"],
  ["reserved", "Reserved"],
  ["safety_stock", "Safety"],
  ["available", "Available"],
  ["incoming", "Incoming"],
  ["unsellable", "Unsellable"],
];

// A level of `l` by its LEVELS key: absent fields are 0 (incoming and the unsellable states are
// sent only where there are some); "unsellable" is damaged + quality control + held.
function level(l, key) {
  if (key === "unsellable") return (l.damaged || 0) + (l.quality_control || 0) + (l.held || 0);
  return l[key] || 0;
}

async function stockPage(sku, signal) {
  const view = $("sku-view");
  $("sku").value = sku;
  if (!sku) {
    fill(view, empty("Type a SKU to see its stock at every location and on every channel."));
    $("sku").focus();
    return;
  }
  fill(view, h("p", { class: "note" }, `Loading ${sku}…`));
  const enc = encodeURIComponent(sku);
  const levels = new Map(); // location -> levels
  const channels = new Map(); // channel -> availability
  let ledger = [];
  let loaded = false;
  const pending = []; // live events that came before the first load finished

  const live = h("span", { class: "live", hidden: true }, "live");
  const totalsBox = h("div", { class: "summary", "aria-label": "Totals" });
  const locationBody = h("tbody");
  const channelBody = h("tbody");
  const ledgerBody = h("tbody");
  const chartNote = h("p", { class: "note chart-note" });
  const chart = svg("svg", {
    class: "chart",
    viewBox: "0 0 600 140",
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `On hand of ${sku} over time`,
  });

  function totals() {
    const t = Object.fromEntries(LEVELS.map(([k]) => [k, 0]));
    for (const l of levels.values()) for (const [k] of LEVELS) t[k] += level(l, k);
    return t;
  }

  function drawTotals() {
    const t = totals();
    totalsBox.replaceChildren(
      ...LEVELS.map(([key, label]) =>
        h(
          "div",
          { class: "figure" },
          h("div", { class: "label" }, label),
          h("div", { class: t[key] < 0 ? "value negative" : "value", "data-total": key }, num(t[key])),
        ),
      ),
    );
  }

  function locationRow(location) {
    const l = levels.get(location);
    return h(
      "tr",
      { "data-location": location },
      h("th", { scope: "row" }, location),
      LEVELS.map(([key]) => numCell(level(l, key), { "data-field": key })),
    );
  }

  function drawLocations() {
    const rows = [...levels.keys()].sort().map(locationRow);
    fill(
      locationBody,
      ...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 5 }, "No stock recorded at any location."))]),
    );
  }

  function channelRow(c) {
    return h(
      "tr",
      { "data-channel": c.channel },
      h("th", { scope: "row" }, c.channel),
      numCell(c.available_to_sell, { "data-field": "available_to_sell" }),
      numCell(c.pool, { class: "num hide-narrow" }),
      h("td", { class: "time hide-narrow" }, time(c.changed_at_ms)),
    );
  }

  function drawChannels() {
    const rows = [...channels.values()].sort((a, b) => a.channel.localeCompare(b.channel)).map(channelRow);
    channelBody.replaceChildren(
      ...(rows.length
        ? rows
        : [h("tr", {}, h("td", { colspan: 4 }, "No channel lists this SKU yet."))]),
    );
  }

  function ledgerRow(e) {
    const delta = e.after.on_hand - e.before.on_hand;
    return h(
      "tr",
      {},
      h("td", { class: "time" }, time(e.applied_at_ms)),
      h("td", {}, e.location),
      h("td", {}, e.kind, e.channel ? ` · ${e.channel}` : "", e.order_id ? ` · ${e.order_id}` : ""),
      h("td", { class: delta < 0 ? "num negative" : "num" }, delta > 0 ? `+${num(delta)}` : num(delta)),
      numCell(e.after.on_hand),
      numCell(e.after.available, { class: "num hide-narrow" }),
      h("td", { class: "hide-narrow" }, h("code", {}, e.cause_event_id)),
    );
  }

  function drawLedger() {
    const rows = ledger.slice().reverse().slice(0, 50).map(ledgerRow);
    ledgerBody.replaceChildren(
      ...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 7 }, "No changes recorded yet."))]),
    );
    drawChart();
  }

  /** Total on hand after each ledger entry, as a step line; the scale is said in words below. */
  function drawChart() {
    chart.replaceChildren();
    const byLocation = new Map();
    const points = [];
    for (const e of ledger) {
      byLocation.set(e.location, e.after.on_hand);
      let total = 0;
      for (const v of byLocation.values()) total += v;
      points.push([e.applied_at_ms, total]);
    }
    if (points.length < 2) {
      chartNote.textContent = points.length
        ? "One change so far: the chart starts with the next."
        : "No changes to chart yet.";
      return;
    }
    const [w, hgt, pad] = [600, 140, 8];
    const t0 = points[0][0];
    const t1 = Math.max(points[points.length - 1][0], t0 + 1);
    const values = points.map((p) => p[1]);
    const lo = Math.min(0, ...values);
    const hi = Math.max(1, ...values);
    const x = (t) => pad + ((t - t0) / (t1 - t0)) * (w - 2 * pad);
    const y = (v) => hgt - pad - ((v - lo) / (hi - lo)) * (hgt - 2 * pad);
    let d = `M${x(points[0][0])},${y(points[0][1])}`;
    for (let i = 1; i < points.length; i++) {
      d += ` H${x(points[i][0])} V${y(points[i][1])}`;
    }
    chart.append(
      svg("line", { class: "axis", x1: pad, x2: w - pad, y1: y(0), y2: y(0) }),
      svg("path", { class: "area", d: `${d} V${y(lo)} H${x(points[0][0])} Z` }),
      svg("path", { class: "line", d }),
    );
    chartNote.textContent =
      `Total on hand after each of the last ${points.length} changes, ` +
      `${time(t0)} to ${time(points[points.length - 1][0])}; ` +
      `lowest ${num(Math.min(...values))}, highest ${num(Math.max(...values))}, now ${num(values[values.length - 1])}.`;
  }

  function applyChange(e) {
    ledger.push(e);
    if (ledger.length > 500) ledger = ledger.slice(-500);
    const known = levels.has(e.location);
    levels.set(e.location, e.after);
    if (!known) drawLocations();
    else {
      const row = locationBody.querySelector(`tr[data-location="${CSS.escape(e.location)}"]`);
      for (const [key] of LEVELS) {
        const cell = row && row.querySelector(`[data-field="${key}"]`);
        if (!cell) continue;
        const text = num(level(e.after, key));
        if (cell.textContent !== text) {
          cell.textContent = text;
          cell.classList.toggle("negative", level(e.after, key) < 0);
          flash(cell);
        }
      }
    }
    drawTotals();
    drawLedger();
  }

  function applyAvailability(a) {
    const old = channels.get(a.channel);
    if (old && old.version >= a.version) return;
    channels.set(a.channel, a);
    drawChannels();
    const cell = channelBody.querySelector(`tr[data-channel="${CSS.escape(a.channel)}"] [data-field]`);
    if (cell && old) flash(cell);
  }

  const onEvent = (name, data) => {
    if (name === "ready") return load();
    if (!loaded) return pending.push([name, data]);
    if (name === "change") applyChange(data);
    else if (name === "availability") applyAvailability(data);
  };

  // The stream opens first; the current state is read once it follows the SKU (its "ready"),
  // so no change falls between the two.
  async function load() {
    try {
      const [stock, chans, led] = await Promise.all([
        api(`/v1/stock/${enc}`, { signal }).catch((e) => {
          if (e.status === 404) return { locations: [] };
          throw e;
        }),
        api(`/v1/skus/${enc}/channels`, { signal }),
        api(`/v1/skus/${enc}/ledger?limit=200`, { signal }),
      ]);
      levels.clear();
      for (const l of stock.locations) levels.set(l.location, l);
      for (const c of chans.channels) channels.set(c.channel, c);
      ledger = led.entries;
      loaded = true;
      render(stock.locations.length === 0 && ledger.length === 0);
      const seen = new Set(ledger.map((e) => e.sequence));
      for (const [name, data] of pending.splice(0)) {
        if (name === "change" && seen.has(data.sequence)) continue;
        onEvent(name, data);
      }
    } catch (e) {
      showError(view, e, "Stock");
      // Redis or NATS away: try again; the banner says why meanwhile.
      if ((e.status === 503 || e.status === 0) && !signal.aborted) setTimeout(load, 3000);
    }
  }

  function render(nothing) {
    drawTotals();
    drawLocations();
    drawChannels();
    drawLedger();
    fill(view, 
      h("h2", {}, sku, " ", live),
      nothing ? empty(`No stock recorded for ${sku} yet. This page updates as soon as some arrives.`) : null,
      totalsBox,
      h("h2", {}, "By location"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "locations" },
          h("caption", { class: "visually-hidden" }, `Levels of ${sku} by location`),
          h(
            "thead",
            {},
            h("tr", {}, h("th", { scope: "col" }, "Location"), LEVELS.map(([, label]) => h("th", { scope: "col", class: "num" }, label))),
          ),
          locationBody,
        ),
      ),
      h("h2", {}, "By channel"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "channels" },
          h("caption", { class: "visually-hidden" }, `What each channel may sell of ${sku}`),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "Channel"),
              h("th", { scope: "col", class: "num" }, "May sell"),
              h("th", { scope: "col", class: "num hide-narrow" }, "Pool"),
              h("th", { scope: "col", class: "hide-narrow" }, "Updated"),
            ),
          ),
          channelBody,
        ),
      ),
      h("h2", {}, "On hand over time"),
      chart,
      chartNote,
      h("h2", {}, "Recent changes"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "ledger" },
          h("caption", { class: "visually-hidden" }, `Recent ledger entries of ${sku}`),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "When"),
              h("th", { scope: "col" }, "Location"),
              h("th", { scope: "col" }, "What"),
              h("th", { scope: "col", class: "num" }, "Change"),
              h("th", { scope: "col", class: "num" }, "On hand"),
              h("th", { scope: "col", class: "num hide-narrow" }, "Available"),
              h("th", { scope: "col", class: "hide-narrow" }, "Cause"),
            ),
          ),
          ledgerBody,
        ),
      ),
    );
  }

  const state = liveBadge(live);
  await follow(`/v1/skus/${enc}/stream`, {
    signal,
    onEvent,
    onState: (s) => {
      state(s);
      if (s === "reconnecting") {
        loaded = false; // the next "ready" reloads the state
        pending.length = 0;
      }
    },
  }).catch((e) => showError(view, e, "Stock"));
}

// --- Alerts -----------------------------------------------------------------------------------

const ALERT_NAMES = {
  low_stock: ["Low stock", "warn"],
  out_of_stock: ["Out of stock", "bad"],
  back_in_stock: ["Back in stock", "ok"],
  negative_stock: ["Negative stock", "bad"],
  channel_oversold: ["Channel oversold", "bad"],
};

async function alertsPage(_, signal) {
  const view = $("alerts-view");
  const body = h("tbody");
  const alerts = [];
  const draw = () => {
    if (!alerts.length) {
      fill(view, empty("No alerts. New ones appear here as they happen."));
      return;
    }
    body.replaceChildren(
      ...alerts.map((a) => {
        const [label, tone] = ALERT_NAMES[a.kind] || [a.kind, ""];
        return h(
          "tr",
          { "data-sequence": a.sequence },
          h("td", { class: "time" }, time(a.raised_at_ms)),
          h("td", {}, h("span", { class: `badge ${tone}` }, label)),
          h("td", {}, h("a", { href: `#/stock/${encodeURIComponent(a.sku)}` }, a.sku)),
          h("td", {}, a.location, a.channel ? ` · ${a.channel}` : ""),
          numCell(a.levels.available),
          numCell(a.levels.on_hand, { class: "num hide-narrow" }),
        );
      }),
    );
    if (!view.contains(body)) {
      fill(view, 
        table(
          [["When"], ["Alert"], ["SKU"], ["Where"], ["Available", "num"], ["On hand", "num hide-narrow"]],
          body,
          "Alerts, newest first",
        ),
      );
    }
  };
  draw();
  await follow("/v1/alerts/stream", {
    signal,
    resume: true,
    onState: liveBadge($("alerts-live")),
    onEvent: (name, a) => {
      if (name !== "alert") return;
      alerts.unshift(a);
      alerts.sort((x, y) => y.raised_at_ms - x.raised_at_ms || y.sequence - x.sequence);
      alerts.length = Math.min(alerts.length, 200);
      draw();
    },
  });
}

// --- Orders -----------------------------------------------------------------------------------

$("order-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("order-id").value.trim();
  if (id) location.hash = `#/orders/${encodeURIComponent(id)}`;
});

function countdown(expiresAt) {
  const el = h("span", { class: "num" });
  const tick = () => {
    const left = Math.round((expiresAt - Date.now()) / 1000);
    if (left <= 0) {
      el.textContent = "expired";
      el.className = "badge bad";
      return;
    }
    const m = Math.floor(left / 60);
    const s = String(left % 60).padStart(2, "0");
    el.textContent = `${m}:${s} left`;
  };
  tick();
  timers.push(setInterval(tick, 1000));
  return el;
}

async function ordersPage(orderId, signal) {
  const view = $("order-view");
  $("order-id").value = orderId;
  if (!orderId) {
    fill(view, empty("Type an order id to see its status, what it holds and until when."));
    return;
  }
  let order;
  try {
    order = await api(`/v1/orders/${encodeURIComponent(orderId)}`, { signal });
  } catch (e) {
    if (e.status === 404) {
      fill(view, empty(`No order ${orderId}: it was never placed, or it ended longer ago than it is kept.`));
      return;
    }
    return showError(view, e, "The order");
  }
  const tone = { confirmed: "ok", rejected: "bad", pending: "warn" }[order.status] || "";
  const holding = order.status === "confirmed" && !order.committed && order.expires_at_ms > 0;
  fill(view, 
    h(
      "div",
      { class: "card" },
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Order"),
        h("dd", {}, h("code", {}, order.order_id)),
        h("dt", {}, "Status"),
        h("dd", {}, h("span", { class: `badge ${tone}` }, order.status)),
        h("dt", {}, "Paid"),
        h("dd", {}, order.committed ? "yes (held until shipped)" : "no"),
        h("dt", {}, "Hold"),
        h(
          "dd",
          {},
          holding ? [countdown(order.expires_at_ms), ` · until ${time(order.expires_at_ms)}`] : "none",
        ),
      ),
    ),
    h("h2", {}, "Lines"),
    table(
      [["Line"], ["SKU"], ["State"], ["Location"], ["Quantity", "num"], ["Shipped", "num"]],
      order.lines.map((l) =>
        h(
          "tr",
          {},
          h("td", {}, l.line_id),
          h("td", {}, h("a", { href: `#/stock/${encodeURIComponent(l.sku)}` }, l.sku)),
          h("td", {}, l.state),
          h("td", {}, l.location || l.requested_location || "–"),
          numCell(l.quantity),
          numCell(l.shipped ?? 0),
        ),
      ),
    ),
    h("h2", {}, "Allocations"),
    order.allocations.length
      ? table(
          [["Line"], ["SKU"], ["Location"], ["Quantity", "num"]],
          order.allocations.map((a) =>
            h("tr", {}, h("td", {}, a.line_id), h("td", {}, a.sku), h("td", {}, a.location), numCell(a.quantity)),
          ),
        )
      : empty("Nothing allocated."),
    order.shortfalls.length
      ? [
          h("h2", {}, "Short"),
          table(
            [["Line"], ["SKU"], ["Requested", "num"], ["Available", "num"]],
            order.shortfalls.map((s) =>
              h("tr", {}, h("td", {}, s.line_id), h("td", {}, s.sku), numCell(s.requested), numCell(s.available)),
            ),
          ),
        ]
      : null,
  );
}

// --- Dead letters -----------------------------------------------------------------------------

async function deadLettersPage(_, signal) {
  const view = $("dl-view");
  fill(view, h("p", { class: "note" }, "Loading…"));
  let page;
  try {
    page = await api("/v1/dead-letters?limit=200", { signal });
  } catch (e) {
    return showError(view, e, "Dead letters");
  }
  const letters = page.dead_letters;
  if (!letters.length) {
    fill(view, empty("No dead letters: every input was applied."));
    return;
  }
  const rows = letters.map((d) => {
    const row = h(
      "tr",
      { "data-sequence": d.sequence },
      h("td", { class: "num seq" }, num(d.sequence)),
      h("td", { class: "time" }, time(d.stored_at_ms)),
      h("td", { class: "subject" }, h("code", {}, d.original_subject || d.subject)),
      h("td", {}, d.reason || "–", d.refusal ? h("div", { class: "note" }, d.refusal) : null),
    );
    const actions = h("td", {});
    if (isAdmin() && d.replayable) {
      const button = h(
        "button",
        {
          type: "button",
          class: "replay",
          "aria-label": `Replay dead letter ${d.sequence}`,
          onclick: async () => {
            button.disabled = true;
            try {
              const done = await api(`/v1/dead-letters/${d.sequence}/replay`, { method: "POST" });
              row.remove();
              say(`Replayed dead letter ${d.sequence}${done.duplicate ? " (it was already stored)" : ""}.`);
              if (!view.querySelector("tbody tr")) fill(view, empty("No dead letters: every input was applied."));
            } catch (e) {
              button.disabled = false;
              say(`Replay failed: ${e.message}`);
            }
          },
        },
        "Replay",
      );
      actions.append(button);
    } else if (!d.replayable) {
      actions.append(h("span", { class: "note" }, "not replayable"));
    }
    row.append(actions);
    return row;
  });
  fill(view, 
    table([["#", "num seq"], ["Stored"], ["From"], ["Reason"], [""]], rows, "Dead letters, oldest first"),
    page.next_after ? h("p", { class: "note" }, "More dead letters exist than are shown; replay or remove these first.") : null,
  );
}

// --- Channels ---------------------------------------------------------------------------------

function rulesText(rules) {
  if (!rules) return "–";
  const parts = Object.entries(rules)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k.replaceAll("_", " ")}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  return parts.length ? parts.join(" · ") : "none";
}

async function channelsPage(_, signal) {
  const view = $("channels-view");
  fill(view, h("p", { class: "note" }, "Loading…"));
  let list;
  try {
    list = await api("/v1/channels", { signal });
  } catch (e) {
    return showError(view, e, "Channel definitions");
  }
  const items = list.channels;
  if (!items.length) {
    fill(view, empty("No sales channels are defined."));
    return;
  }
  fill(view, 
    table(
      [["Channel"], ["Kind"], ["Draws from"], ["Rules"], ["Version", "num"]],
      items.map((c) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, c.name ? `${c.name} ` : "", h("code", {}, c.id)),
          h("td", {}, c.kind || "–"),
          h("td", {}, (c.locations || []).join(", ")),
          h("td", {}, rulesText(c.rules), c.allocation ? h("div", { class: "note" }, `allocation: ${c.allocation}`) : null),
          numCell(c.rules_version),
        ),
      ),
      "Sales channels",
    ),
  );
}

// ---------------------------------------------------------------------------------------------

if (sessionStorage.getItem(TOKEN_KEY)) {
  signIn(sessionStorage.getItem(TOKEN_KEY)).catch((e) => signOut(e.message));
} else {
  signOut("");
}
