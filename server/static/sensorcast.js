// Sensorcast browser client: an ES module, no build step (SPEC §9). The same behaviour as
// the Python client server.client: reconnect with full-jitter backoff, resubscribe every
// channel from its last offset and epoch, `recovered: false` surfaced (onGap), requests as
// promises keyed by id with timeouts, AuthError (4001/4003) without a reconnect loop,
// an application-level ping as heartbeat (browsers hide WebSocket pings), clean close.
//
//   import { SensorcastClient } from "/static/sensorcast.js";
//   const client = new SensorcastClient(location.origin, { token });
//   client.subscribe("readings", { onFrame: (f) => ..., onGap: () => reload() });
//   const sensors = await client.request("sensors", "list", { limit: 100 });

const WS_PATH = "/api/v1/ws";
const AUTH_CLOSE_CODES = new Set([4001, 4003]);
const FINAL_CLOSE_CODES = new Set([4001, 4003, 4400]);

export class RequestError extends Error {
  constructor(code, message, details) {
    super(`${code}: ${message}`);
    this.name = "RequestError";
    this.code = code;
    this.details = details;
  }
}

export class AuthError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.name = "AuthError";
    this.code = code;
    this.reason = reason;
  }
}

/** Full jitter: attempt n waits uniform(0, min(cap, base * factor ** n)) seconds. */
export function backoffDelay(attempt, { base = 0.5, cap = 30, factor = 2 } = {}, random = Math.random) {
  return random() * Math.min(cap, base * factor ** Math.min(attempt, 64));
}

/** http(s)://host[:port][/path] or ws(s)://... -> the WebSocket URL. */
export function wsUrl(url) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "" || u.pathname === "/") u.pathname = WS_PATH;
  return u;
}

class Subscription {
  constructor(client, channel, opts) {
    this.client = client;
    this.channel = channel;
    this.position = opts.since ? { offset: opts.since.offset, epoch: opts.since.epoch } : null;
    this.snapshot = Boolean(opts.snapshot);
    this.onFrame = opts.onFrame || (() => {});
    this.onSubscribed = opts.onSubscribed || (() => {});
    this.onGap = opts.onGap || (() => {});
    this.onError = opts.onError || ((err) => console.warn("subscription", channel, err.message));
    this.gaps = 0;
    this.active = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {});
  }

  unsubscribe() {
    return this.client._unsubscribe(this);
  }

  _subscribed(frame) {
    this.active = true;
    const resubscribed = this.position !== null;
    if (!resubscribed || frame.recovered === false) {
      this.position = { offset: frame.offset, epoch: frame.epoch };
    }
    this.onSubscribed(frame);
    if (resubscribed && frame.recovered === false) {
      this.gaps += 1;
      this.onGap(frame);
    }
    this._resolve(frame);
  }

  _publication(frame) {
    if (!this.active) return;
    let offset = frame.offsets ? frame.offsets[this.channel] : undefined;
    if (offset === undefined && frame.channel === this.channel) offset = frame.offset;
    if (typeof offset === "number") {
      const pos = this.position;
      const epoch = frame.channel === this.channel && frame.epoch ? frame.epoch : pos ? pos.epoch : "";
      if (pos && pos.epoch === epoch && offset <= pos.offset) return; // seen already
      this.position = { offset, epoch };
    }
    this.onFrame(frame);
  }

  _fail(err) {
    this.active = false;
    this._reject(err);
    this.onError(err);
  }
}

export class SensorcastClient extends EventTarget {
  /**
   * options: token, params (extra query, e.g. {username}), backoff {base, cap, factor},
   * requestTimeout (ms, 10000), random (for tests), WebSocket (constructor, for tests).
   */
  constructor(url = globalThis.location?.origin, options = {}) {
    super();
    this.url = wsUrl(url);
    this.token = options.token || null;
    this.params = options.params || {};
    this.backoff = options.backoff || {};
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.random = options.random || Math.random;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.status = "idle";
    this.error = null;
    this.reconnects = 0;
    this.connection = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer, data, sent}
    this._subs = new Map(); // channel -> Subscription
    this._subscribing = new Map(); // subscribe frame id -> Subscription
    this._attempt = 0;
    this._timer = null;
    this._heartbeat = null;
    this._closed = false;
  }

  /** Open the socket (again after a close); reconnects by itself from then on. */
  connect() {
    this._closed = false;
    this.error = null;
    this._open();
    return this;
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._stopHeartbeat();
    if (this._ws) this._ws.close(1000, "client closed");
    this._ws = null;
    this._failPending(new RequestError("closed", "the client is closed"));
    this._setStatus("closed");
  }

  get connected() {
    return this.status === "connected";
  }

  subscribe(channel, opts = {}) {
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, opts);
    this._subs.set(channel, sub);
    if (this.connected) this._sendSubscribe(sub);
    return sub;
  }

  subscription(channel) {
    return this._subs.get(channel);
  }

  request(resource, action, payload = {}, opts = {}) {
    return this._call({ type: "request", resource, action, payload }, opts.timeout).then((f) => f.data);
  }

  publish(channel, data, opts = {}) {
    return this._call({ type: "publish", channel, data }, opts.timeout).then((f) => f.data);
  }

  /** A newer token for the same user before this one expires; reconnects use it too. */
  async refresh(token) {
    const frame = await this._call({ type: "refresh", token });
    this.token = token;
    return frame.data;
  }

  /** Any client frame (message, typing, join_room, ping): resolves with its reply frame. */
  send(frame, opts = {}) {
    return this._call({ ...frame }, opts.timeout);
  }

  /** A frame that needs no answer (typing): sent now if connected, else dropped. */
  fire(frame) {
    if (this.connected) this._ws.send(JSON.stringify(frame));
  }

  // Internals

  _setStatus(status, detail = {}) {
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: { status, ...detail } }));
  }

  _call(frame, timeout) {
    if (this.error) return Promise.reject(this.error);
    if (this._closed) return Promise.reject(new RequestError("closed", "the client is closed"));
    const id = String(this._nextId++);
    frame.id = id;
    const data = JSON.stringify(frame);
    return new Promise((resolve, reject) => {
      const wait = timeout ?? this.requestTimeout;
      const entry = { resolve, reject, data, sent: false };
      entry.timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RequestError("timeout", `no answer to ${frame.type} within ${wait} ms`));
      }, wait);
      this._pending.set(id, entry);
      if (this.connected) {
        this._ws.send(data);
        entry.sent = true;
      } // else: queued, sent once connected (Socket.IO's offline buffer)
    });
  }

  _settle(id, fn) {
    const entry = this._pending.get(id);
    if (!entry) return false;
    this._pending.delete(id);
    clearTimeout(entry.timer);
    fn(entry);
    return true;
  }

  _failPending(err, onlySent = false) {
    for (const [id, entry] of [...this._pending]) {
      if (onlySent && !entry.sent) continue;
      this._settle(id, (e) => e.reject(err));
    }
  }

  _open() {
    const url = new URL(this.url);
    for (const [k, v] of Object.entries(this.params)) if (v) url.searchParams.set(k, v);
    if (this.token) url.searchParams.set("token", this.token);
    this._setStatus(this.reconnects || this._attempt ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onClose(ws, ev);
  }

  _onMessage(ws, ev) {
    if (ws !== this._ws) return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return;
    }
    this._lastFrame = Date.now();
    if (frame.type === "connection") return this._onConnection(ws, frame);
    this._route(frame);
  }

  _onConnection(ws, hello) {
    this.connection = hello;
    const wasReconnect = this._everConnected;
    this._everConnected = true;
    if (wasReconnect) this.reconnects += 1;
    this._attempt = 0;
    // Channels the server subscribed by default (`general`) are not ours unless asked for.
    for (const channel of hello.subscriptions || []) ws.send(JSON.stringify({ type: "unsubscribe", channel }));
    this.status = "connected";
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const entry of this._pending.values()) {
      if (!entry.sent) {
        ws.send(entry.data);
        entry.sent = true;
      }
    }
    this._startHeartbeat(hello.heartbeat_interval);
    this._setStatus("connected", { reconnect: Boolean(wasReconnect), hello });
  }

  _sendSubscribe(sub) {
    sub.active = false;
    const id = `s${this._nextId++}`;
    this._subscribing.set(id, sub);
    const frame = { type: "subscribe", channel: sub.channel, id };
    if (sub.position) frame.since = { offset: sub.position.offset, epoch: sub.position.epoch };
    else if (sub.snapshot) frame.snapshot = true;
    this._ws.send(JSON.stringify(frame));
  }

  _route(frame) {
    const { type, id } = frame;
    if (id !== undefined && this._subscribing.has(id)) {
      const sub = this._subscribing.get(id);
      this._subscribing.delete(id);
      if (this._subs.get(sub.channel) !== sub) return;
      if (type === "subscribed") sub._subscribed(frame);
      else if (type === "error") {
        this._subs.delete(sub.channel);
        sub._fail(new RequestError(frame.code, frame.message, frame.details));
      }
      return;
    }
    if (id !== undefined && this._pending.has(String(id))) {
      this._settle(String(id), (e) =>
        type === "error" ? e.reject(new RequestError(frame.code, frame.message, frame.details)) : e.resolve(frame),
      );
      return;
    }
    if (type === "subscribed" && frame.recovered === false) {
      // Unasked: the server's stream restarted there without what was in between (a
      // scale-out outage): a gap, surfaced like one found on resubscribing.
      const sub = this._subs.get(frame.channel);
      if (sub && sub.active && sub.position !== null) sub._subscribed(frame);
      return;
    }
    if (type === "subscribed" || type === "unsubscribed" || typeof frame.channel !== "string") {
      if (type === "notification" || type === "system_event") this._emit(frame);
      return;
    }
    const names = frame.offsets ? Object.keys(frame.offsets) : [frame.channel];
    for (const name of names) this._subs.get(name)?._publication(frame);
  }

  _emit(frame) {
    this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
  }

  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._stopHeartbeat();
    this._subscribing.clear();
    for (const sub of this._subs.values()) sub.active = false;
    // Sent and unanswered: whether it ran is unknown, so it is not sent again.
    this._failPending(new RequestError("disconnected", "the connection was lost"), true);
    if (this._closed) return;
    if (FINAL_CLOSE_CODES.has(ev.code)) {
      const err = AUTH_CLOSE_CODES.has(ev.code)
        ? new AuthError(ev.code, ev.reason)
        : new RequestError("bad_request", ev.reason || "connection refused");
      this.error = err;
      this._closed = true;
      this._failPending(err);
      for (const sub of this._subs.values()) sub._fail(err);
      this._setStatus("auth_failed", { code: ev.code, reason: ev.reason, error: err });
      return;
    }
    this.status = "disconnected";
    this.dispatchEvent(new CustomEvent("status", { detail: { status: "disconnected", code: ev.code, reason: ev.reason } }));
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const delay = backoffDelay(this._attempt, this.backoff, this.random);
    this._attempt += 1;
    this._setStatus("reconnecting", { attempt: this._attempt, delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (!this._closed) this._open();
    }, delay * 1000);
  }

  // Heartbeat: a `ping` every interval; no frame at all within two intervals = dead peer.
  _startHeartbeat(interval) {
    this._stopHeartbeat();
    if (!interval) return;
    const ms = interval * 1000;
    this._lastFrame = Date.now();
    this._heartbeat = setInterval(() => {
      const ws = this._ws;
      if (!ws) return;
      if (Date.now() - this._lastFrame > 2 * ms + 1000) {
        this._onClose(ws, { code: 4000, reason: "no heartbeat" });
        ws.close();
        return;
      }
      this.send({ type: "ping" }, { timeout: ms }).catch(() => {});
    }, ms);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeat);
    this._heartbeat = null;
  }

  async _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    sub.active = false;
    if (this.connected) await this._call({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
  }
}

/** REST beside the socket, in the one error shape: throws RequestError. */
export async function rest(path, { method = "GET", body, token, base = "" } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const e = (data && data.error) || {};
    throw new RequestError(e.code || String(resp.status), e.message || resp.statusText, e.details);
  }
  return data;
}
