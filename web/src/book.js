// The closed candles of one series as the page holds them, and the holes between them.
//
// Invariants: closed candles are unique by time and kept ascending; every hole the page knows of is an
// open gap (a range of missing periods) until it is filled, and is drawn as whitespace so the
// index-based time scale shows a break. Nothing here draws or fetches: the controller does.

const MAX_WHITESPACE_PER_GAP = 5000; // a daemon down for days must not make the chart huge

export class CandleBook {
  constructor(tf) {
    this.tf = tf;
    this.bars = new Map(); // candle_time -> candle
    this.times = []; // ascending candle times
    this.gaps = []; // [{from, to}]: periods from..prev(to) are missing; `to` is the candle after the hole
    this.gapsSeen = 0;
    this.duplicatesDropped = 0;
  }

  get lastTime() {
    return this.times.length ? this.times[this.times.length - 1] : null;
  }

  get firstTime() {
    return this.times.length ? this.times[0] : null;
  }

  /** Replace everything with an HTTP tail; holes inside it become open gaps. */
  load(candles) {
    this.bars.clear();
    this.times = [];
    this.gaps = [];
    for (const c of candles) this.addClosed(c);
  }

  /** One closed candle from the daemon: "append" (newest), "fill" (inside an open gap) or "dup" (known). */
  addClosed(c) {
    const t = c.candle_time;
    const last = this.lastTime;
    if (last === null || t > last) {
      if (last !== null && t > this.tf.next(last)) this.openGap(this.tf.next(last), t);
      this.bars.set(t, c);
      this.times.push(t);
      return "append";
    }
    if (this.bars.has(t) || !this.inGap(t)) {
      this.duplicatesDropped += this.bars.has(t) ? 1 : 0;
      return "dup";
    }
    this._insert(c);
    this._normalize();
    return "fill";
  }

  /** A `gap` frame, or a hole seen locally: periods from..prev(to) are missing. */
  openGap(from, to) {
    if (!(from < to)) return;
    if (this.gaps.some((g) => g.from <= from && to <= g.to)) return; // already known
    this.gaps.push({ from, to });
    this.gapsSeen += 1;
    this._normalize();
  }

  inGap(t) {
    return this.gaps.some((g) => g.from <= t && t < g.to);
  }

  /** Candles fetched for a hole: keep those that fill open gaps. Returns how many were new. */
  fill(candles) {
    let added = 0;
    for (const c of candles) {
      if (!this.bars.has(c.candle_time) && this.inGap(c.candle_time)) {
        this._insert(c);
        added += 1;
      }
    }
    if (added) this._normalize();
    return added;
  }

  /** The missing periods of a gap, capped (whitespace points to draw). */
  missingTimes(gap) {
    const out = [];
    for (let t = gap.from; t < gap.to && out.length < MAX_WHITESPACE_PER_GAP; t = this.tf.next(t)) {
      if (!this.bars.has(t)) out.push(t);
    }
    return out;
  }

  /** Chart data: the candles, and a whitespace point ({time} only) for every missing period of a gap. */
  chartData() {
    const points = this.times.map((t) => this.bars.get(t));
    for (const g of this.gaps) for (const t of this.missingTimes(g)) points.push({ candle_time: t, whitespace: true });
    points.sort((a, b) => a.candle_time - b.candle_time);
    return points;
  }

  /** Adjacent closed candles that are not one period apart (0 when the series is contiguous). */
  holes() {
    let n = 0;
    for (let i = 1; i < this.times.length; i++) if (this.times[i] !== this.tf.next(this.times[i - 1])) n += 1;
    return n;
  }

  _insert(c) {
    const t = c.candle_time;
    let lo = 0;
    let hi = this.times.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.times[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    this.times.splice(lo, 0, t);
    this.bars.set(t, c);
  }

  /** Re-split every gap into the runs of periods still missing; drop the filled ones; merge overlaps. */
  _normalize() {
    const runs = [];
    for (const g of this.gaps) {
      let start = null;
      let t = g.from;
      for (let steps = 0; t < g.to && steps < 100_000; t = this.tf.next(t), steps++) {
        if (this.bars.has(t)) {
          if (start !== null) runs.push({ from: start, to: t });
          start = null;
        } else if (start === null) {
          start = t;
        }
      }
      if (start !== null) runs.push({ from: start, to: g.to });
    }
    runs.sort((a, b) => a.from - b.from);
    const merged = [];
    for (const r of runs) {
      const prev = merged[merged.length - 1];
      if (prev && r.from <= prev.to) prev.to = Math.max(prev.to, r.to);
      else merged.push({ ...r });
    }
    this.gaps = merged;
  }
}
