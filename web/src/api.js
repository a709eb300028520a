// The daemon's HTTP API (docs/http.md, docs/factors.md): same origin, JSON, errors as {code, detail}.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export async function getJson(path, params = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) qs.set(k, String(v));
  const query = qs.toString();
  const url = query ? `${path}?${query}` : path;
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) {
    let body = {};
    try {
      body = await r.json();
    } catch {
      // not JSON (a proxy's page): the status says enough
    }
    throw new ApiError(r.status, body.code, body.detail);
  }
  return r.json();
}

export const api = {
  whitelist: () => getJson("/api/market/whitelist"),
  topMarkets: (market) => getJson("/api/market/top_markets", { market, limit: 20 }),
  candles: (seriesId, since, limit) => getJson("/api/market/candles", { series_id: seriesId, since, limit }),
  health: () => getJson("/api/market/health"),
  catalog: () => getJson("/api/factor/catalog"),
  drawDelta: (seriesId, cursor, window) =>
    getJson("/api/draw/delta", { series_id: seriesId, cursor_version_id: cursor, window_candles: window }),
};
