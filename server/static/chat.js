// The chat panel: rooms, presence, typing and history, over the dashboard's one socket.
import { rest } from "/static/sensorcast.js";

const TYPING_RENEW_MS = 2000; // a `typing: true` is re-sent this often while typing
const TYPING_SHOWN_MS = 6000; // someone else's typing shows this long unless renewed

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export class ChatPanel {
  constructor(client, { room = "lobby" } = {}) {
    this.client = client;
    this.room = null;
    this.sub = null;
    this.presence = new Map(); // user_id -> username
    this.typists = new Map(); // user_id -> {username, timer}
    this.seen = new Set(); // message ids shown
    this.typingSent = 0;
    $("chat-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.sendMessage();
    });
    $("chat-input").addEventListener("input", () => this.typed());
    $("chat-input").addEventListener("blur", () => this.stopTyping());
    $("room-select").addEventListener("change", (ev) => this.join(ev.target.value));
    $("room-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = $("room-input").value.trim();
      if (name) this.join(name);
      $("room-input").value = "";
    });
    this.join(room);
    this.loadRooms();
  }

  async loadRooms() {
    const rooms = await rest("/api/v1/rooms").catch(() => ({ items: [] }));
    const names = new Set(rooms.items.map((r) => r.room));
    if (this.room) names.add(this.room);
    const select = $("room-select");
    select.replaceChildren(...[...names].sort().map((n) => new Option(`# ${n}`, n, false, n === this.room)));
  }

  async join(room) {
    if (room === this.room) return;
    if (this.sub) await this.sub.unsubscribe();
    this.room = room;
    this.presence.clear();
    this.typists.clear();
    this.seen.clear();
    $("messages").replaceChildren();
    this.renderPresence();
    this.renderTyping();
    this.sub = this.client.subscribe(`chat:${room}`, {
      onSubscribed: (f) => {
        if (f.presence) {
          this.presence = new Map(f.presence.map((m) => [m.user_id, m.username]));
          this.renderPresence();
        }
      },
      onFrame: (f) => this.onFrame(f),
      onGap: () => this.reloadHistory(),
    });
    this.loadRooms();
  }

  /** After a gap nothing recovered the missed messages: the history API has them. */
  async reloadHistory() {
    const page = await rest(`/api/v1/messages/${encodeURIComponent(this.room)}?limit=50`).catch(() => null);
    if (!page) return;
    $("messages").replaceChildren();
    this.seen.clear();
    for (const m of [...page.items].reverse()) this.addMessage(m);
  }

  onFrame(f) {
    if (f.type === "message") this.addMessage(f.data);
    else if (f.type === "user_joined") {
      this.presence.set(f.data.user_id, f.data.username);
      this.renderPresence();
    } else if (f.type === "user_left") {
      this.presence.delete(f.data.user_id);
      this.setTyping(f.data, false);
      this.renderPresence();
    } else if (f.type === "typing") this.setTyping(f.data, f.data.is_typing);
  }

  addMessage(m) {
    if (!m || this.seen.has(m.id)) return;
    this.seen.add(m.id);
    const list = $("messages");
    const li = el("li", m.user_id === "system" ? "system" : "");
    li.dataset.id = m.id;
    li.append(el("span", "who", m.username || m.user_id), el("span", "text", m.content), el("span", "when", clock(m.created_at)));
    list.append(li);
    while (list.children.length > 200) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
    if (m.user_id) this.setTyping(m, false);
  }

  setTyping(who, on) {
    const current = this.typists.get(who.user_id);
    if (current) clearTimeout(current.timer);
    if (on) {
      const timer = setTimeout(() => this.setTyping(who, false), TYPING_SHOWN_MS);
      this.typists.set(who.user_id, { username: who.username, timer });
    } else this.typists.delete(who.user_id);
    this.renderTyping();
  }

  renderTyping() {
    const names = [...this.typists.values()].map((t) => t.username);
    $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
  }

  renderPresence() {
    const chips = [...this.presence.entries()].map(([id, name]) => {
      const s = el("span", "", name || id);
      s.dataset.userId = id;
      return s;
    });
    $("presence").replaceChildren(...chips);
  }

  typed() {
    const now = Date.now();
    if (now - this.typingSent < TYPING_RENEW_MS) return;
    this.typingSent = now;
    this.client.fire({ type: "typing", is_typing: true, channel: `chat:${this.room}` });
  }

  stopTyping() {
    if (!this.typingSent) return;
    this.typingSent = 0;
    this.client.fire({ type: "typing", is_typing: false, channel: `chat:${this.room}` });
  }

  async sendMessage() {
    const input = $("chat-input");
    const content = input.value.trim();
    if (!content) return;
    input.value = "";
    this.stopTyping();
    try {
      await this.client.send({ type: "message", content, channel: `chat:${this.room}` });
    } catch (err) {
      input.value = content;
      this.addMessage({ id: `e${Date.now()}`, user_id: "system", username: "error", content: err.message });
    }
  }
}
