// /websocket client: frames of newline-delimited JSON, automatic reconnect with backoff.

/** Parse one frame: result objects and control objects (they carry a "type" key). */
export function parseFrame(text) {
  const lines = text.split("\n").filter((l) => l.length);
  try {
    // JSON strings cannot hold a raw newline, so the lines join into one array.
    return JSON.parse(`[${lines.join(",")}]`);
  } catch {
    const out = [];
    for (const l of lines) {
      try { out.push(JSON.parse(l)); } catch { /* skip a malformed line */ }
    }
    return out;
  }
}

export class LiveSocket {
  /**
   * @param {string} url
   * @param {{onResults: Function, onControl: Function, onState: Function}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.h = handlers;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
  }

  /** Stop for good (until connect() is called again): no reconnect. */
  stop() {
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    this.attempt = 0;
    if (ws) ws.close();
  }

  connect() {
    clearTimeout(this.timer);
    this.h.onState(this.attempt ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.h.onState("connected");
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      const objs = parseFrame(ev.data);
      const results = [];
      for (const o of objs) {
        if (o && typeof o === "object" && typeof o.type === "string" && o.id === undefined) this.h.onControl(o);
        else if (o && typeof o === "object") results.push(o);
      }
      if (results.length) this.h.onResults(results);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.retry();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  retry() {
    this.ws = null;
    this.attempt++;
    // 0.5 s, 1 s, 2 s ... capped at 10 s, with +-20 % jitter so browsers do not stampede.
    const delay = Math.min(10000, 500 * 2 ** (this.attempt - 1)) * (0.8 + 0.4 * Math.random());
    this.h.onState("reconnecting", delay);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
