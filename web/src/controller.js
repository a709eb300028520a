// One series on screen: HTTP tail, then /ws/market from its last candle; gaps drawn and refetched until
// healed; the forming candle; overlays from /api/draw/delta. Frames of other series are ignored.

import { api } from "./api.js";
import { CandleBook } from "./book.js";
import { timeframeOf } from "./timeframe.js";

const TAIL_CANDLES = 1000;
const HEAL_FIRST_MS = 2000;
const HEAL_MAX_MS = 30_000;
const OVERLAY_DEBOUNCE_MS = 250;
const OVERLAY_RETRY_MS = 1000; // 409 ledger_out_of_sync: the projections are a moment behind

export class SeriesController {
  /**
   * @param {import("./chart.js").CandleChart} chart
   * @param {import("./feed.js").MarketFeed} feed
   * @param {{visible: (feature: string) => boolean}} toggles
   * @param {(msg: string|null) => void} showError
   */
  constructor(chart, feed, toggles, showError) {
    this.chart = chart;
    this.feed = feed;
    this.toggles = toggles;
    this.showError = showError;
    this.seriesId = null;
    this.book = null;
    this.forming = null;
    this.loaded = false;
    this.generation = 0; // bumped on every series switch: late answers for the old one are dropped
    this.instructions = new Map();
    this.cursor = 0;
    this.overlayTimer = null;
    this.overlayFetches = 0;
    this.healTimer = null;
    this.healDelayMs = HEAL_FIRST_MS;
    this.healing = false;
    this.lastSubscribe = null;
  }

  async select(seriesId) {
    if (seriesId === this.seriesId) return;
    if (this.seriesId && this.loaded) this.feed.send({ type: "unsubscribe", series_id: this.seriesId });
    const gen = ++this.generation;
    this.seriesId = seriesId;
    this.book = new CandleBook(timeframeOf(seriesId));
    this.forming = null;
    this.loaded = false;
    this._resetOverlays();
    clearTimeout(this.healTimer);
    this.healDelayMs = HEAL_FIRST_MS;
    this.showError(null);
    this.chart.setData([], null);
    this.chart.setGaps([]);
    let body;
    try {
      body = await api.candles(seriesId, null, TAIL_CANDLES);
    } catch (e) {
      if (gen === this.generation) this.showError(`${seriesId}: ${e.message}`);
      return;
    }
    if (gen !== this.generation) return;
    this.book.load(body.candles);
    this._redraw();
    this.chart.showLatest(150);
    this.loaded = true;
    this.subscribe();
    this._scheduleHeal(0);
    this.refreshOverlays();
  }

  /** (Re)subscribe from the last closed candle: no duplicate, and any hole comes back as a `gap` frame. */
  subscribe() {
    if (!this.loaded || !this.feed.connected) return;
    this.lastSubscribe = { series_id: this.seriesId, since: this.book.lastTime };
    this.feed.send({ type: "subscribe", series_id: this.seriesId, since: this.book.lastTime, supports_batch: true });
  }

  onOpen() {
    this.subscribe();
    if (this.loaded) this.refreshOverlays(); // the daemon may have restarted (and rebuilt) meanwhile
  }

  onFrame(f) {
    if (f.type === "error" && (f.series_id === undefined || f.series_id === this.seriesId)) {
      this.showError(`${f.series_id ? `${f.series_id} refused` : "daemon"}: ${f.code}: ${f.message}`);
      return;
    }
    if (f.series_id !== this.seriesId || !this.loaded) return;
    switch (f.type) {
      case "candles_batch":
        for (const c of f.candles) this._closed(c, false);
        this._redraw();
        this._afterClosed();
        break;
      case "candle_closed":
        if (!this._closed(f.candle, true)) this._redraw();
        this._afterClosed();
        break;
      case "candle_forming":
        if (this.book.lastTime === null || f.candle.candle_time > this.book.lastTime) {
          this.forming = f.candle;
          if (!this.chart.update(f.candle)) this._redraw();
        }
        break;
      case "gap":
        this.book.openGap(f.expected_next_time, f.actual_time);
        this._redraw();
        this._scheduleHeal(0);
        break;
      case "system":
        if (f.event === "factor.rebuild") {
          this._resetOverlays();
          this.refreshOverlays();
        }
        break;
      default:
        break;
    }
  }

  /** Book one closed candle; with `draw`, put it on the chart when it is simply the newest. False when the
   * chart needs a full redraw (a hole opened or filled, or a forming candle newer than it is shown). */
  _closed(c, draw) {
    const how = this.book.addClosed(c);
    if (this.forming && this.forming.candle_time <= c.candle_time) this.forming = null;
    if (how === "dup") return true;
    if (how === "fill" || !draw || this.book.gaps.length) return false;
    return this.chart.update(c);
  }

  _afterClosed() {
    // A new candle is a cheap moment to look again (the daemon may have filled a hole meanwhile): at most one
    // fetch per candle and gap, on top of the 2 s .. 30 s backoff.
    if (this.book.gaps.length) this._scheduleHeal(0);
    this._scheduleOverlays(OVERLAY_DEBOUNCE_MS);
  }

  _redraw() {
    this.chart.setData(this.book.chartData(), this.forming);
    this.chart.setGaps(this.book.gaps);
  }

  // -- healing gaps over HTTP -----------------------------------------------------------------------

  _scheduleHeal(delayMs) {
    if (this.healing) return;
    clearTimeout(this.healTimer);
    const gen = this.generation;
    this.healTimer = setTimeout(() => this._heal(gen), delayMs);
  }

  async _heal(gen) {
    if (gen !== this.generation || !this.book.gaps.length) return;
    this.healing = true;
    let added = 0;
    try {
      for (const g of [...this.book.gaps]) {
        const missing = this.book.missingTimes(g);
        if (!missing.length) continue;
        const since = this.book.tf.prev(g.from); // `since` is exclusive
        const body = await api.candles(this.seriesId, since, Math.min(5000, missing.length));
        if (gen !== this.generation) break;
        added += this.book.fill(body.candles);
      }
    } catch {
      // the daemon is restarting, or busy: the next attempt follows
    } finally {
      this.healing = false;
    }
    if (gen !== this.generation) {
      this._scheduleHeal(0); // the series changed meanwhile: its own gaps, if any
      return;
    }
    if (added) {
      this._redraw();
      this._resetOverlays(); // a backfill behind the head rewinds the projections: draw them afresh
      this.refreshOverlays();
    }
    if (this.book.gaps.length) {
      clearTimeout(this.healTimer);
      this.healTimer = setTimeout(() => this._heal(gen), this.healDelayMs);
      this.healDelayMs = Math.min(this.healDelayMs * 2, HEAL_MAX_MS);
    } else {
      this.healDelayMs = HEAL_FIRST_MS;
    }
  }

  // -- overlays -------------------------------------------------------------------------------------

  _resetOverlays() {
    this.instructions = new Map();
    this.cursor = 0;
    this.chart.clearOverlays();
  }

  _scheduleOverlays(delayMs) {
    clearTimeout(this.overlayTimer);
    const gen = this.generation;
    this.overlayTimer = setTimeout(() => gen === this.generation && this.refreshOverlays(), delayMs);
  }

  async refreshOverlays() {
    const gen = this.generation;
    const window = Math.min(5000, Math.max(1, this.book.times.length));
    let delta;
    try {
      delta = await api.drawDelta(this.seriesId, this.cursor, window);
    } catch (e) {
      if (gen === this.generation && (e.status === 409 || e.status === undefined || e.status >= 500)) {
        this._scheduleOverlays(OVERLAY_RETRY_MS);
      }
      return;
    }
    if (gen !== this.generation) return;
    this.overlayFetches += 1;
    for (const p of delta.instruction_catalog_patch) this.instructions.set(p.instruction_id, p.definition);
    const active = new Set(delta.active_ids);
    for (const id of [...this.instructions.keys()]) if (!active.has(id)) this.instructions.delete(id);
    this.cursor = delta.next_cursor.version_id;
    this.drawOverlays();
  }

  drawOverlays() {
    this.chart.drawOverlays(this.instructions, (f) => this.toggles.visible(f), this.book?.firstTime ?? null);
  }

  /** What the page shows, for people (status line) and the end-to-end test. */
  state() {
    const b = this.book;
    const features = {};
    for (const d of this.instructions.values()) features[d.feature] = (features[d.feature] || 0) + 1;
    return {
      series: this.seriesId,
      loaded: this.loaded,
      candles: b ? b.times.length : 0,
      firstTime: b ? b.firstTime : null,
      lastTime: b ? b.lastTime : null,
      formingTime: this.forming ? this.forming.candle_time : null,
      openGaps: b ? b.gaps.length : 0,
      gaps: b ? b.gaps.map((g) => ({ ...g })) : [],
      gapsSeen: b ? b.gapsSeen : 0,
      holes: b ? b.holes() : 0,
      duplicatesDropped: b ? b.duplicatesDropped : 0,
      connected: this.feed.connected,
      connects: this.feed.connects,
      lastSubscribe: this.lastSubscribe,
      overlays: { count: this.instructions.size, cursor: this.cursor, fetches: this.overlayFetches, features },
    };
  }
}
