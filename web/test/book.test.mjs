// The page's candle book: unique, ascending closed candles and the open gaps between them (node --test).
import assert from "node:assert/strict";
import { test } from "node:test";

import { CandleBook } from "../src/book.js";
import { seriesIdProblem, timeframeOf } from "../src/timeframe.js";

const M1 = timeframeOf("binance:spot:BTC/USDT:1m");
const T0 = 1_700_000_040;
const c = (t, close = 10) => ({ candle_time: t, open: 10, high: 11, low: 9, close, volume: 1 });
const at = (...minutes) => minutes.map((m) => T0 + 60 * m);

test("closed candles stay unique and ascending whatever order they come in", () => {
  const book = new CandleBook(M1);
  for (const t of at(0, 1, 1, 2, 0)) book.addClosed(c(t));
  assert.deepEqual(book.times, at(0, 1, 2));
  assert.equal(book.duplicatesDropped, 2);
  assert.equal(book.holes(), 0);
});

test("a hole in the HTTP tail is an open gap, drawn as whitespace, healed by a fill", () => {
  const book = new CandleBook(M1);
  book.load(at(0, 1, 4, 5).map((t) => c(t)));
  assert.deepEqual(book.gaps, [{ from: T0 + 120, to: T0 + 240 }]);
  const points = book.chartData();
  assert.deepEqual(points.filter((p) => p.whitespace).map((p) => p.candle_time), at(2, 3));
  assert.equal(book.fill([c(T0 + 120)]), 1);
  assert.deepEqual(book.gaps, [{ from: T0 + 180, to: T0 + 240 }], "the rest stays open");
  assert.equal(book.fill([c(T0 + 180), c(T0 + 180), c(T0 + 300)]), 1, "only missing periods are taken");
  assert.deepEqual(book.gaps, []);
  assert.deepEqual(book.times, at(0, 1, 2, 3, 4, 5));
});

test("a gap frame opens a gap once; a candle inside it fills it, one outside it is a duplicate", () => {
  const book = new CandleBook(M1);
  book.load(at(0).map((t) => c(t)));
  book.addClosed(c(T0 + 300)); // the live close after a hole: the page opens the gap itself
  book.openGap(T0 + 60, T0 + 300); // and the daemon's gap frame says the same: nothing new
  assert.equal(book.gapsSeen, 1);
  assert.equal(book.addClosed(c(T0 + 120)), "fill");
  assert.equal(book.addClosed(c(T0 + 300)), "dup");
  assert.deepEqual(book.gaps, [
    { from: T0 + 60, to: T0 + 120 },
    { from: T0 + 180, to: T0 + 300 },
  ]);
  assert.equal(book.holes(), 2);
});

test("overlapping gaps merge; a huge one is drawn capped", () => {
  const book = new CandleBook(M1);
  book.load([c(T0)]);
  book.openGap(T0 + 60, T0 + 600);
  book.openGap(T0 + 300, T0 + 900);
  assert.deepEqual(book.gaps, [{ from: T0 + 60, to: T0 + 900 }]);
  book.openGap(T0 + 60, T0 + 60 * 100_000);
  assert.equal(book.missingTimes(book.gaps[0]).length, 5000);
});

test("typed series ids are checked before anything is asked of the daemon", () => {
  assert.equal(seriesIdProblem("binance:spot:BTC/USDT:1m"), null);
  assert.match(seriesIdProblem("BTCUSDT"), /expected exchange/);
  assert.match(seriesIdProblem("binance:spot:BTC/USDT:7m"), /unknown timeframe 7m/);
  const month = timeframeOf("binance:spot:BTC/USDT:1M");
  assert.equal(month.next(Date.UTC(2024, 0, 1) / 1000), Date.UTC(2024, 1, 1) / 1000);
});
