// Series ids and timeframe bucket math (docs/protocol.md), for the page: validate a typed id, step between periods.

const TIMEFRAMES = {
  "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800,
  "1h": 3600, "2h": 7200, "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200,
  "1d": 86400, "3d": 259200, "1w": 604800, "1M": null, // months vary in length
};

export const TIMEFRAME_NAMES = Object.keys(TIMEFRAMES);

const SERIES_RE = /^([a-z0-9]+):(spot|futures):([A-Z0-9]+\/[A-Z0-9]+):([0-9]+[mhdwM])$/;

/** Why `id` is not a valid series id, or null when it is. The daemon checks again. */
export function seriesIdProblem(id) {
  const m = SERIES_RE.exec(id);
  if (!m) return "expected exchange:spot|futures:BASE/QUOTE:timeframe, e.g. binance:spot:BTC/USDT:1m";
  if (!(m[4] in TIMEFRAMES)) return `unknown timeframe ${m[4]} (one of ${TIMEFRAME_NAMES.join(" ")})`;
  return null;
}

/** The timeframe of a series: `next(t)` / `prev(t)` step one period from an aligned open time (seconds). */
export function timeframeOf(seriesId) {
  const name = seriesId.split(":").pop();
  const seconds = TIMEFRAMES[name];
  if (seconds === undefined) throw new Error(`unknown timeframe ${name}`);
  if (seconds !== null) {
    return { name, seconds, next: (t) => t + seconds, prev: (t) => t - seconds };
  }
  const addMonths = (t, k) => {
    const d = new Date(t * 1000);
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + k, 1) / 1000;
  };
  return { name, seconds: 30 * 86400, next: (t) => addMonths(t, 1), prev: (t) => addMonths(t, -1) };
}
