// The candle chart (lightweight-charts v5) and the factor overlays drawn on it.
//
// Overlay instructions come from /api/draw/delta: markers go to the candle series' markers plugin,
// each polyline is its own line series (a zhongshu box is its top and bottom lines).

import { CandlestickSeries, LineSeries, LineStyle, createChart, createSeriesMarkers } from "lightweight-charts";

const GAP_COLOR = "#f59e0b";

export class CandleChart {
  constructor(container) {
    this.chart = createChart(container, {
      autoSize: true,
      // The TradingView link lightweight-charts' licence asks for (with the notice in the page's footer).
      layout: { background: { color: "#0f172a" }, textColor: "#cbd5e1", attributionLogo: true },
      grid: { vertLines: { color: "#1e293b" }, horzLines: { color: "#1e293b" } },
      timeScale: { timeVisible: true, secondsVisible: false, rightOffset: 4 },
      rightPriceScale: { borderColor: "#334155" },
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {
      upColor: "#22c55e", downColor: "#ef4444", borderVisible: false,
      wickUpColor: "#22c55e", wickDownColor: "#ef4444",
    });
    this.markers = createSeriesMarkers(this.candles, []);
    this.lines = new Map(); // instruction id -> {series, definition}
    this.lastTime = null; // newest time on the chart (forming included)
    this.overlayMarkers = [];
    this.gapMarkers = [];
  }

  /** Replace all data: closed candles, whitespace for missing periods, and the forming candle if newer. */
  setData(points, forming) {
    const data = points.map((p) => (p.whitespace ? { time: p.candle_time } : bar(p)));
    if (forming && (!points.length || forming.candle_time > points[points.length - 1].candle_time)) {
      data.push(bar(forming));
    }
    this.candles.setData(data);
    this.lastTime = data.length ? data[data.length - 1].time : null;
  }

  /** Put one candle at the end (or replace the last one); false when it is older: the caller redraws. */
  update(c) {
    if (this.lastTime !== null && c.candle_time < this.lastTime) return false;
    this.candles.update(bar(c));
    this.lastTime = c.candle_time;
    return true;
  }

  /** Show the latest `n` bars. */
  showLatest(n) {
    const total = this.candles.data().length;
    if (total > 0) this.chart.timeScale().setVisibleLogicalRange({ from: Math.max(0, total - n), to: total + 3 });
  }

  /** A label on the first candle after each gap, so the break says what it is. */
  setGaps(gaps) {
    this.gapMarkers = gaps.map((g) => ({
      time: g.to, position: "aboveBar", color: GAP_COLOR, shape: "square", text: "gap", size: 1,
    }));
    this._drawMarkers();
  }

  /**
   * Draw the visible overlay instructions.
   * @param {Map<string, object>} instructions id -> definition
   * @param {(feature: string) => boolean} visible
   * @param {number|null} firstTime earliest candle on the chart: nothing is drawn before it
   */
  drawOverlays(instructions, visible, firstTime) {
    const markers = [];
    const wanted = new Map();
    for (const [id, d] of instructions) {
      if (!visible(d.feature)) continue;
      if (d.type === "marker") {
        if (firstTime === null || d.time >= firstTime) {
          markers.push({ time: d.time, position: d.position, color: d.color, shape: d.shape, text: d.text, size: d.size });
        }
      } else if (d.type === "polyline") {
        wanted.set(id, d);
      }
    }
    this.overlayMarkers = markers;
    this._drawMarkers();
    for (const [id, line] of this.lines) {
      if (!wanted.has(id)) {
        this.chart.removeSeries(line.series);
        this.lines.delete(id);
      }
    }
    for (const [id, d] of wanted) {
      let line = this.lines.get(id);
      if (!line) {
        const series = this.chart.addSeries(LineSeries, {
          lastValueVisible: false, priceLineVisible: false, crosshairMarkerVisible: false,
          pointMarkersVisible: false,
        });
        line = { series, definition: null };
        this.lines.set(id, line);
      }
      if (line.definition !== d) {
        line.series.applyOptions({
          color: d.color, lineWidth: d.lineWidth || 1,
          lineStyle: d.lineStyle === "dashed" ? LineStyle.Dashed : LineStyle.Solid,
        });
        line.series.setData(linePoints(d.points, firstTime));
        line.definition = d;
      }
    }
  }

  clearOverlays() {
    for (const line of this.lines.values()) this.chart.removeSeries(line.series);
    this.lines.clear();
    this.overlayMarkers = [];
    this._drawMarkers();
  }

  _drawMarkers() {
    const all = [...this.overlayMarkers, ...this.gapMarkers].sort((a, b) => a.time - b.time);
    this.markers.setMarkers(all);
  }
}

function bar(c) {
  return { time: c.candle_time, open: c.open, high: c.high, low: c.low, close: c.close };
}

/** Line points ascending and unique by time, cut at the first candle on the chart (interpolated there). */
function linePoints(points, firstTime) {
  const byTime = new Map();
  for (const p of points) byTime.set(p.time, p.value);
  const sorted = [...byTime.entries()].sort((a, b) => a[0] - b[0]).map(([time, value]) => ({ time, value }));
  if (firstTime === null) return sorted;
  const out = [];
  for (let i = 0; i < sorted.length; i++) {
    const p = sorted[i];
    if (p.time >= firstTime) {
      const prev = sorted[i - 1];
      if (prev && prev.time < firstTime && p.time > firstTime) {
        const k = (firstTime - prev.time) / (p.time - prev.time);
        out.push({ time: firstTime, value: prev.value + k * (p.value - prev.value) });
      }
      out.push(p);
    }
  }
  return out;
}
