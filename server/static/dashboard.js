// The wall-screen dashboard at GET /: one socket (sensorcast.js), state loaded over REST and
// the socket's `request`, then kept live by subscriptions; DOM writes batched per frame.
import { SensorcastClient, RequestError, rest } from "/static/sensorcast.js";
import { LiveChart } from "/static/chart.js";
import { ChatPanel } from "/static/chat.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const FRESH_S = 15; // a reading younger than this is "live"
const RECENT_S = 120; // then "recent", then "stale"

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function stored(key, fallback) {
  const given = query.get(key);
  if (given) localStorage.setItem(`sensorcast.${key}`, given);
  return given || localStorage.getItem(`sensorcast.${key}`) || fallback();
}

function age(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function fmt(v) {
  if (typeof v !== "number") return String(v);
  return Math.abs(v) >= 1000 ? v.toFixed(0) : +v.toFixed(2) + "";
}

class Dashboard {
  constructor() {
    this.token = stored("token", () => "");
    const guest = `guest-${Math.random().toString(36).slice(2, 6)}`;
    this.username = stored("username", () => guest);
    this.userId = stored("user_id", () => this.username);
    this.sensors = new Map(); // id -> {sensor, values, timestamps, last, row, cells}
    this.dirty = new Set();
    this.selected = null;
    this.selectedSub = null;
    this.anomalies = new Map();
    this.notifications = 0;
    this.scheduled = false;
    this.client = new SensorcastClient(location.origin, {
      token: this.token,
      params: this.token ? {} : { username: this.username, user_id: this.userId },
    });
    this.chart = new LiveChart($("chart"), { onMetrics: (ms, m) => this.renderMetrics(ms, m) });
    this.client.addEventListener("status", (ev) => this.onStatus(ev.detail));
    this.subscribeAll();
    this.client.connect();
    this.chat = new ChatPanel(this.client, { room: query.get("room") || "lobby" });
    this.wire();
    this.loadAll();
    setInterval(() => this.tick(), 1000);
    this.tick();
  }

  wire() {
    $("token-button").addEventListener("click", () => this.askToken("Sign in with a token.").then((t) => t && location.reload()));
    $("sensor-filter").addEventListener("input", () => this.applyFilter());
    $("forecast-button").addEventListener("click", () => this.forecast());
  }

  // Connection

  onStatus({ status, hello, reason }) {
    const pill = $("status");
    pill.dataset.status = status;
    const label = { connected: "live", connecting: "connecting", reconnecting: "reconnecting", disconnected: "offline", auth_failed: "refused", closed: "closed" };
    pill.querySelector("b").textContent = label[status] || status;
    pill.title = reason || "";
    if (hello) {
      const u = hello.user || {};
      const anonymous = !u.role || u.role === "anonymous";
      const who = anonymous ? this.username : u.name || u.id;
      $("identity").textContent = `${who} · ${anonymous ? "anonymous" : u.role}`;
      $("token-button").textContent = this.token ? "Change token" : "Sign in";
      // One's own private channel: only with a token (an anonymous label never grants it).
      if (!anonymous && u.id && !this.client.subscription(`user:${u.id}`)) {
        this.client.subscribe(`user:${u.id}`, { onFrame: (f) => this.addNotification(f) });
      }
    }
    if (status === "auth_failed") $("identity").textContent = `token refused: ${reason}`;
  }

  subscribeAll() {
    const c = this.client;
    c.subscribe("sensors", { onFrame: (f) => this.onSensorEvent(f), onGap: () => this.loadSensors() });
    c.subscribe("readings", { onFrame: (f) => this.onReading(f), onGap: () => this.loadLatest() });
    c.subscribe("anomalies", { onFrame: (f) => this.onAnomaly(f), onGap: () => this.loadAnomalies() });
    c.subscribe("predictions", {
      onFrame: (f) => {
        if (f.event_type !== "prediction_completed") return;
        this.chart.setForecast(f.data);
        this.schedule();
      },
    });
    c.subscribe("general", { onFrame: (f) => this.addNotification(f) });
  }

  async loadAll() {
    await Promise.all([this.loadSensors(), this.loadAnomalies()]);
  }

  // Sensors table

  async loadSensors() {
    const items = [];
    let cursor = null;
    do {
      const page = await rest(`/api/v1/sensors?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    const ids = new Set(items.map((s) => s.id));
    for (const id of [...this.sensors.keys()]) if (!ids.has(id)) this.removeSensor(id);
    for (const s of items) this.upsertSensor(s);
    $("sensor-count").textContent = String(this.sensors.size);
    await this.loadLatest();
    if (!this.selected && items.length) this.select(items[0].id);
  }

  async loadLatest() {
    await Promise.all(
      [...this.sensors.keys()].map((id) =>
        this.client.request("readings", "latest", { sensor_id: id }).then(
          (latest) => {
            const entry = this.sensors.get(id);
            if (!entry) return;
            for (const [m, v] of Object.entries(latest.values)) this.setValue(entry, m, v, latest.timestamps[m]);
          },
          () => {},
        ),
      ),
    );
  }

  upsertSensor(sensor) {
    let entry = this.sensors.get(sensor.id);
    if (!entry) {
      const row = el("tr");
      row.dataset.sensorId = sensor.id;
      const cells = { fresh: el("td"), name: el("td", "name"), value: el("td", "value"), age: el("td", "age") };
      cells.fresh.append(el("span", "fresh"));
      row.append(cells.fresh, cells.name, cells.value, cells.age);
      row.addEventListener("click", () => this.select(sensor.id));
      entry = { sensor, values: {}, timestamps: {}, last: 0, row, cells };
      this.sensors.set(sensor.id, entry);
      const body = $("sensors").tBodies[0];
      const after = [...body.rows].find((r) => Number(r.dataset.sensorId) > sensor.id);
      body.insertBefore(row, after || null);
    }
    entry.sensor = sensor;
    const label = sensor.name || `${sensor.type} #${sensor.id}`;
    entry.cells.name.replaceChildren(el("b", "", label), el("span", "", [sensor.type, sensor.model, `#${sensor.id}`].filter(Boolean).join(" · ")));
    this.markDirty(sensor.id);
    this.applyFilter();
    $("sensors-empty").hidden = this.sensors.size > 0;
    $("sensor-count").textContent = String(this.sensors.size);
  }

  removeSensor(id) {
    const entry = this.sensors.get(id);
    if (!entry) return;
    entry.row.remove();
    this.sensors.delete(id);
    $("sensors-empty").hidden = this.sensors.size > 0;
    $("sensor-count").textContent = String(this.sensors.size);
  }

  onSensorEvent(f) {
    if (f.entity_type !== "sensor") return;
    if (f.event_type === "deleted") this.removeSensor(f.entity_id);
    else if (f.event_type === "created" || f.event_type === "updated") this.upsertSensor(f.data);
  }

  onReading(f) {
    if (f.event_type !== "reading") return;
    const d = f.data;
    const entry = this.sensors.get(d.sensor_id);
    if (entry) for (const [m, v] of Object.entries(d.values)) this.setValue(entry, m, v, d.timestamp);
    if (this.selected === d.sensor_id) {
      this.chart.addReading(d);
      this.schedule();
    }
  }

  setValue(entry, metric, value, timestamp) {
    const t = Date.parse(timestamp) / 1000;
    if (entry.timestamps[metric] && entry.timestamps[metric] > t) return; // an older one
    entry.values[metric] = value;
    entry.timestamps[metric] = t;
    entry.last = Math.max(entry.last, t);
    this.markDirty(entry.sensor.id);
  }

  markDirty(id) {
    this.dirty.add(id);
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.flush());
  }

  /** One DOM pass per animation frame, whatever the number of readings in between. */
  flush() {
    this.scheduled = false;
    for (const id of this.dirty) {
      const entry = this.sensors.get(id);
      if (entry) this.renderValues(entry);
    }
    this.dirty.clear();
    this.chart.render();
  }

  renderValues(entry) {
    const { sensor, values, cells } = entry;
    const metrics = Object.keys(values);
    let alarm = false;
    const pairs = metrics.map((m) => {
      const span = el("span", "pair");
      if (metrics.length > 1) span.append(el("span", "metric", m));
      span.append(document.createTextNode(fmt(values[m])));
      if (sensor.unit && metrics.length === 1) span.append(el("span", "unit", sensor.unit));
      const th = sensor.thresholds && sensor.thresholds[m];
      if (th && ((th.min != null && values[m] < th.min) || (th.max != null && values[m] > th.max))) alarm = true;
      return span;
    });
    cells.value.replaceChildren(...(pairs.length ? pairs : [el("span", "muted", "no data")]));
    cells.value.classList.toggle("alarm", alarm);
    this.renderAge(entry, Date.now() / 1000);
  }

  renderAge(entry, now) {
    const since = entry.last ? now - entry.last : null;
    const state = since === null ? "none" : since < FRESH_S ? "live" : since < RECENT_S ? "recent" : "stale";
    const dot = entry.cells.fresh.firstChild;
    if (dot.dataset.fresh !== state) dot.dataset.fresh = state;
    const text = since === null ? "—" : age(since);
    if (entry.cells.age.textContent !== text) entry.cells.age.textContent = text;
  }

  tick() {
    const now = Date.now() / 1000;
    for (const entry of this.sensors.values()) this.renderAge(entry, now);
    $("clock").textContent = new Date().toLocaleTimeString();
    if (this.selected) {
      this.chart.dirty = true; // the time window moves on
      this.schedule();
    }
  }

  applyFilter() {
    const q = $("sensor-filter").value.trim().toLowerCase();
    for (const e of this.sensors.values()) e.row.hidden = Boolean(q) && !e.row.cells[1].textContent.toLowerCase().includes(q);
  }

  // Chart

  async select(id) {
    const entry = this.sensors.get(id);
    if (!entry || this.selected === id) return;
    this.selected = id;
    for (const e of this.sensors.values()) e.row.classList.toggle("selected", e.sensor.id === id);
    $("chart-title").textContent = entry.sensor.name || `${entry.sensor.type} #${id}`;
    $("forecast-button").disabled = false;
    if (this.selectedSub) this.selectedSub.unsubscribe();
    // The sensor's own channel with a snapshot: its latest reading per metric at once.
    this.selectedSub = this.client.subscribe(`sensors:${id}`, {
      snapshot: true,
      onFrame: (f) => {
        if (f.metadata && f.metadata.snapshot && f.event_type === "reading") {
          this.chart.addReading(f.data);
          this.schedule();
        }
      },
      onGap: () => this.chart.show(entry.sensor, this.chart.metric).then(() => this.schedule()),
    });
    await this.chart.show(entry.sensor).catch((err) => ($("chart-summary").textContent = err.message));
    this.schedule();
  }

  renderMetrics(metrics, current) {
    const chips = metrics.map((m) => {
      const b = el("button", m === current ? "on" : "", m);
      b.type = "button";
      b.addEventListener("click", () => {
        this.chart.select(m);
        this.renderMetrics(this.chart.metrics(), m);
        this.schedule();
      });
      return b;
    });
    $("metrics").replaceChildren(...chips);
    const s = this.sensors.get(this.selected)?.sensor;
    // A sensor has one unit: it belongs to its own type's metric (or to its only one).
    const metric = current || s?.type;
    const unit = s?.unit && (metric === s.type || metrics.length <= 1) ? ` in ${s.unit}` : "";
    $("chart-summary").textContent = s ? `${metric}${unit} · last 15 minutes` : "";
  }

  async forecast() {
    const metric = this.chart.metric;
    if (!this.selected || !metric) return;
    await this.withToken("A forecast needs a token.", (token) =>
      rest(`/api/v1/sensors/${this.selected}/predictions`, { method: "POST", body: { metric, horizon: 20 }, token }),
    ).then((p) => p && this.chart.setForecast(p), (err) => ($("chart-summary").textContent = err.message));
    this.schedule();
  }

  // Anomalies

  async loadAnomalies() {
    const page = await rest("/api/v1/anomalies?resolved=false&limit=50").catch(() => ({ items: [] }));
    $("anomalies").replaceChildren();
    this.anomalies.clear();
    for (const a of [...page.items].reverse()) this.showAnomaly(a, false);
  }

  onAnomaly(f) {
    if (f.entity_type !== "anomaly") return;
    this.showAnomaly(f.data, true);
  }

  showAnomaly(a, live) {
    let li = this.anomalies.get(a.id);
    if (!li) {
      li = el("li");
      li.dataset.anomalyId = a.id;
      this.anomalies.set(a.id, li);
      $("anomalies").prepend(li);
      if (live) li.classList.add("fresh-in");
    }
    const sensor = this.sensors.get(a.sensor_id)?.sensor;
    const name = sensor ? sensor.name || `${sensor.type} #${sensor.id}` : `sensor #${a.sensor_id}`;
    const bound = a.max != null && a.value > a.max ? `above ${fmt(a.max)}` : a.min != null ? `below ${fmt(a.min)}` : "out of range";
    const main = el("div", "main");
    main.append(el("div", "title", `${name}: ${a.metric} ${fmt(a.value)}`), el("div", "meta", `${bound} · ${new Date(a.timestamp).toLocaleTimeString()}`));
    li.replaceChildren(el("span", "icon"), main);
    li.classList.toggle("resolved", Boolean(a.resolved));
    if (!a.resolved) {
      const b = el("button", "ghost resolve", "Resolve");
      b.type = "button";
      b.addEventListener("click", () => this.resolve(a.id, b));
      li.append(b);
    }
    const open = [...this.anomalies.values()].filter((x) => !x.classList.contains("resolved")).length;
    $("anomaly-count").textContent = String(open);
    $("anomaly-count").classList.toggle("quiet", open === 0);
    $("anomalies-empty").hidden = this.anomalies.size > 0;
  }

  async resolve(id, button) {
    button.disabled = true;
    try {
      const a = await this.withToken("Resolving an anomaly needs a token (role service or admin).", (token) =>
        rest(`/api/v1/anomalies/${id}/resolve`, { method: "POST", token }),
      );
      if (a) this.showAnomaly(a, false);
      else button.disabled = false;
    } catch (err) {
      button.disabled = false;
      if (err.code === "conflict") {
        // Someone resolved it first: the anomaly_resolved event is on its way; show it now.
        this.anomalies.get(id)?.classList.add("resolved");
        button.remove();
      } else button.title = err.message;
    }
  }

  // Tokens: asked for when the server needs one, kept in localStorage.

  async withToken(why, action) {
    try {
      return await action(this.token || undefined);
    } catch (err) {
      if (!(err instanceof RequestError) || !["unauthorized", "forbidden"].includes(err.code)) throw err;
      const token = await this.askToken(`${why} ${err.message}`);
      if (!token) return null;
      return await action(token);
    }
  }

  askToken(why) {
    const dialog = $("token-dialog");
    $("token-why").textContent = why;
    $("token-input").value = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          const token = dialog.returnValue === "save" ? $("token-input").value.trim() : "";
          if (token) {
            this.token = token;
            localStorage.setItem("sensorcast.token", token);
          }
          resolve(token || null);
        },
        { once: true },
      );
    });
  }

  // Notifications and system events

  addNotification(f) {
    if (f.type !== "notification" && f.type !== "system_event" && f.type !== "event") return;
    const li = el("li", `note fresh-in ${f.level || ""}`);
    const main = el("div", "main");
    const title = f.type === "notification" ? f.event : f.type === "system_event" ? f.message : "event";
    const body = f.type === "notification" ? f.payload : f.type === "system_event" ? f.data : f.data;
    const meta = [new Date(f.timestamp).toLocaleTimeString(), f.channel];
    main.append(el("div", "title", title), el("div", "meta", meta.join(" · ")));
    if (body && Object.keys(body).length) main.append(el("div", "meta", JSON.stringify(body).slice(0, 160)));
    li.append(el("span", "icon"), main);
    const list = $("notifications");
    list.prepend(li);
    while (list.children.length > 100) list.lastChild.remove();
    this.notifications += 1;
    $("notification-count").textContent = String(this.notifications);
    $("notifications-empty").hidden = true;
  }
}

window.dashboard = new Dashboard();
