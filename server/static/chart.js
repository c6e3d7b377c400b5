// The selected sensor's live chart: history from the readings API (the aggregate API when
// the window holds too many readings), then live points, and the latest forecast ahead.
import uPlot from "/static/vendor/uplot/uPlot.esm.js";
import { rest } from "/static/sensorcast.js";

const WINDOW_S = 15 * 60; // seconds of history shown
const MAX_POINTS = 3000;

export class LiveChart {
  constructor(el, { onMetrics } = {}) {
    this.el = el;
    this.onMetrics = onMetrics || (() => {});
    this.sensor = null;
    this.metric = null;
    this.points = new Map(); // metric -> [[t, v], ...] sorted by t
    this.forecast = new Map(); // metric -> [[t, v], ...]
    this.dirty = false;
    this.plot = null;
    this.loadSeq = 0;
    new ResizeObserver(() => this._resize()).observe(el);
  }

  async show(sensor, metric = null) {
    const seq = ++this.loadSeq;
    this.sensor = sensor;
    this.metric = metric;
    this.points = new Map();
    this.forecast = new Map();
    const since = new Date(Date.now() - WINDOW_S * 1000).toISOString();
    const id = sensor.id;
    const [page, predictions] = await Promise.all([
      rest(`/api/v1/readings?sensor_id=${id}&from=${encodeURIComponent(since)}&limit=1000`),
      rest(`/api/v1/predictions?sensor_id=${id}&limit=10`).catch(() => ({ items: [] })),
    ]);
    if (seq !== this.loadSeq) return; // another sensor was selected meanwhile
    const history = new Map();
    for (const r of page.items) this._push(history, r.metric, Date.parse(r.timestamp) / 1000, r.value);
    if (page.next_cursor) {
      // Too many readings for the window: averages per bucket instead, per metric.
      history.clear();
      const metrics = [...new Set(page.items.map((r) => r.metric))];
      const bucket = Math.max(1, Math.round(WINDOW_S / 300));
      for (const m of metrics) {
        const agg = await rest(
          `/api/v1/sensors/${id}/readings/aggregate?metric=${encodeURIComponent(m)}&bucket=${bucket}&from=${encodeURIComponent(since)}`,
        );
        for (const b of agg.items || agg.buckets || []) this._push(history, m, Date.parse(b.start) / 1000, b.avg);
      }
      if (seq !== this.loadSeq) return;
    }
    // Live points that arrived while history loaded are kept (merged by time).
    for (const [m, pts] of this.points) for (const [t, v] of pts) this._push(history, m, t, v);
    this.points = history;
    for (const p of [...predictions.items].reverse()) this.setForecast(p);
    if (!this.metric || !this.points.has(this.metric)) this.metric = this.points.keys().next().value || null;
    this.onMetrics(this.metrics(), this.metric);
    this.dirty = true;
  }

  metrics() {
    return [...new Set([...this.points.keys(), ...this.forecast.keys()])];
  }

  select(metric) {
    this.metric = metric;
    this.dirty = true;
  }

  /** A reading entity_event for the shown sensor. */
  addReading(data) {
    if (!this.sensor || data.sensor_id !== this.sensor.id) return;
    const t = Date.parse(data.timestamp) / 1000;
    const known = this.points.size;
    for (const [m, v] of Object.entries(data.values)) this._push(this.points, m, t, v);
    if (!this.metric) this.metric = this.points.keys().next().value;
    if (this.points.size !== known) this.onMetrics(this.metrics(), this.metric);
    this.dirty = true;
  }

  setForecast(prediction) {
    if (!this.sensor || prediction.sensor_id !== this.sensor.id) return;
    const pts = prediction.points.map((p) => [Date.parse(p.timestamp) / 1000, p.value]);
    this.forecast.set(prediction.metric, pts);
    this.dirty = true;
  }

  _push(map, metric, t, v) {
    if (typeof v !== "number") return;
    let arr = map.get(metric);
    if (!arr) map.set(metric, (arr = []));
    const last = arr[arr.length - 1];
    if (last && last[0] === t && last[1] === v) return; // the snapshot repeats the history
    if (arr.length && arr[arr.length - 1][0] > t) {
      const i = arr.findIndex((p) => p[0] > t);
      arr.splice(i, 0, [t, v]);
    } else arr.push([t, v]);
    if (arr.length > MAX_POINTS) arr.splice(0, arr.length - MAX_POINTS);
  }

  /** Called once per animation frame by the dashboard: redraws only when something changed. */
  render() {
    if (!this.dirty) return;
    this.dirty = false;
    const actual = (this.metric && this.points.get(this.metric)) || [];
    const cutoff = Date.now() / 1000 - WINDOW_S;
    while (actual.length && actual[0][0] < cutoff) actual.shift();
    const ahead = ((this.metric && this.forecast.get(this.metric)) || []).filter(
      (p) => !actual.length || p[0] >= actual[actual.length - 1][0],
    );
    const xs = [], ys = [], fs = [];
    for (const [t, v] of actual) xs.push(t), ys.push(v), fs.push(null);
    if (actual.length && ahead.length) fs[fs.length - 1] = ys[ys.length - 1]; // join the lines
    for (const [t, v] of ahead) xs.push(t), ys.push(null), fs.push(v);
    this.el.dataset.points = String(actual.length);
    this.el.dataset.forecast = String(ahead.length);
    this.el.dataset.last = actual.length ? String(actual[actual.length - 1][1]) : "";
    const data = [xs, ys, fs];
    if (!this.plot) this._create(data);
    else this.plot.setData(data);
  }

  _size() {
    const r = this.el.getBoundingClientRect();
    return { width: Math.max(200, Math.floor(r.width - 16)), height: Math.max(160, Math.floor(r.height - 10)) };
  }

  _resize() {
    if (this.plot) this.plot.setSize(this._size());
  }

  /** The sensor's thresholds for the shown metric, as dashed lines where they are in view. */
  _drawThresholds(u) {
    const th = this.sensor?.thresholds?.[this.metric];
    if (!th) return;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.strokeStyle = "rgba(248,81,73,0.75)";
    ctx.fillStyle = "rgba(248,81,73,0.9)";
    ctx.lineWidth = 1 * devicePixelRatio;
    ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.font = `${11 * devicePixelRatio}px sans-serif`;
    ctx.textAlign = "left"; // uPlot leaves the y axis' "right" set
    ctx.textBaseline = "bottom";
    for (const [key, label] of [["max", "max"], ["min", "min"]]) {
      if (typeof th[key] !== "number") continue;
      const y = u.valToPos(th[key], "y", true);
      if (y < top || y > top + height) continue;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      const text = `${label} ${th[key]}`;
      ctx.fillText(text, left + 8 * devicePixelRatio, y - 3 * devicePixelRatio);
    }
    ctx.restore();
  }

  /** The sensor's unit, on its own type's metric (or its only one): a sensor has one unit. */
  _unit() {
    const s = this.sensor;
    const mine = s && (this.metric === s.type || this.points.size <= 1);
    return mine && s.unit ? ` ${s.unit}` : "";
  }

  _create(data) {
    const axis = { stroke: "#8b98a9", grid: { stroke: "#222b37", width: 1 }, ticks: { stroke: "#263141" } };
    this.plot = new uPlot(
      {
        ...this._size(),
        cursor: { y: false },
        // Always the whole window (a lone reading would otherwise span years), and the
        // forecast when it reaches further.
        scales: {
          x: {
            time: true,
            // From the data itself: uPlot pads a single x value by a thousand days.
            range: (u) => {
              const xs = u.data[0];
              const now = Date.now() / 1000;
              const first = xs.length ? xs[0] : now;
              const last = xs.length ? xs[xs.length - 1] : now;
              return [Math.min(first, now - WINDOW_S), Math.max(last, now)];
            },
          },
        },
        axes: [axis, { ...axis, size: 60, values: (u, vals) => vals.map((v) => `${+v.toFixed(2)}${this._unit()}`) }],
        series: [
          {},
          // Points drawn while there are too few for a line to show.
          { label: "readings", stroke: "#4cc2ff", width: 2, fill: "rgba(76,194,255,0.08)", spanGaps: true, points: { show: (u) => u.data[0].length < 30, size: 6 } },
          { label: "forecast", stroke: "#c297ff", width: 2, dash: [6, 5], spanGaps: true, points: { show: false } },
        ],
        legend: { show: false },
        hooks: { draw: [(u) => this._drawThresholds(u)] },
      },
      data,
      this.el,
    );
  }
}
