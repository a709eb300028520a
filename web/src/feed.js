// The /ws/market connection: one socket for the page, reconnected by itself with backoff
// (0.5 s doubling to 10 s, with jitter). What to subscribe to after (re)connecting is the caller's call.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;

export function marketUrl(loc = window.location) {
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws/market`;
}

export class MarketFeed {
  /**
   * @param {string} url
   * @param {{onOpen: () => void, onFrame: (frame: object) => void, onStatus: (s: object) => void}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.connected = false;
    this.connects = 0; // successful opens, for the status line and the test hook
    this.delayMs = FIRST_DELAY_MS;
    this.retryAt = null;
  }

  start() {
    this._connect();
  }

  /** Send a client message (dropped while disconnected: the next open resubscribes). */
  send(message) {
    if (this.connected) this.ws.send(JSON.stringify(message));
  }

  _connect() {
    this.retryAt = null;
    this._status("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      this.connects += 1;
      this.delayMs = FIRST_DELAY_MS;
      this._status("connected");
      this.handlers.onOpen();
    };
    ws.onmessage = (ev) => {
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.handlers.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.connected = false;
      const delay = this.delayMs * (0.5 + Math.random()); // jitter: restarted daemons get no stampede
      this.delayMs = Math.min(this.delayMs * 2, MAX_DELAY_MS);
      this.retryAt = Date.now() + delay;
      this._status("disconnected", ev.reason || `code ${ev.code}`);
      setTimeout(() => this._connect(), delay);
    };
    // onerror is always followed by onclose, which does the retry
  }

  _status(state, detail = "") {
    this.handlers.onStatus({ state, detail, retryAt: this.retryAt, connects: this.connects });
  }
}
