// The candle chart: lightweight-charts (vendored, static/vendor/README.md) fed with REST
// /klines history and live kline_<interval>@M updates. Prices become JavaScript numbers
// here only to be drawn; nothing computed from them goes back to the exchange.
import { CandlestickSeries, HistogramSeries, createChart } from "../vendor/lightweight-charts.esm.js";

function decimalsOf(step) {
  const frac = String(step).split(".")[1] || "";
  return frac.replace(/0+$/, "").length;
}

export class CandleChart {
  constructor(element) {
    this.element = element;
    this.chart = createChart(element, {
      autoSize: true,
      layout: { background: { color: "#ffffff" }, textColor: "#1f2933" },
      grid: { vertLines: { color: "#eef1f4" }, horzLines: { color: "#eef1f4" } },
      timeScale: { timeVisible: true, secondsVisible: false },
      rightPriceScale: { borderColor: "#d0d7de" },
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {
      upColor: "#1a7f37", downColor: "#cf222e", borderVisible: false,
      wickUpColor: "#1a7f37", wickDownColor: "#cf222e",
    });
    this.volume = this.chart.addSeries(HistogramSeries, {
      priceScaleId: "volume", priceFormat: { type: "volume" }, color: "#8c959f",
    });
    this.chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.bars = new Map(); // time (s) -> bar
    this.lastTime = 0;
  }

  setMarket(market) {
    const precision = decimalsOf(market.tickSize);
    this.candles.applyOptions({ priceFormat: { type: "price", precision, minMove: Number(market.tickSize) } });
    this.clear();
  }

  clear() {
    this.bars.clear();
    this.lastTime = 0;
    this.candles.setData([]);
    this.volume.setData([]);
    this.publish();
  }

  static fromRow(row) {
    // [openTime, open, high, low, close, volume, closeTime, quoteVolume, count]
    return { time: Math.floor(row[0] / 1000), open: Number(row[1]), high: Number(row[2]),
      low: Number(row[3]), close: Number(row[4]), volume: Number(row[5]) };
  }

  static fromKline(k) {
    return { time: Math.floor(k.openTime / 1000), open: Number(k.open), high: Number(k.high),
      low: Number(k.low), close: Number(k.close), volume: Number(k.volume) };
  }

  /** History rows (ascending). Live bars already drawn are kept when newer. */
  setHistory(rows) {
    for (const row of rows) {
      const bar = CandleChart.fromRow(row);
      if (!this.bars.has(bar.time)) this.bars.set(bar.time, bar);
    }
    const sorted = [...this.bars.values()].sort((a, b) => a.time - b.time);
    this.candles.setData(sorted.map(({ volume, ...ohlc }) => ohlc));
    this.volume.setData(sorted.map((b) => ({ time: b.time, value: b.volume, color: b.close >= b.open ? "#8fd19e" : "#f4a6ab" })));
    this.lastTime = sorted.length ? sorted[sorted.length - 1].time : 0;
    this.publish();
  }

  /** One kline message from the gateway. */
  update(k) {
    const bar = CandleChart.fromKline(k);
    if (bar.time < this.lastTime) return; // the chart only updates its newest bar
    this.bars.set(bar.time, bar);
    const { volume, ...ohlc } = bar;
    this.candles.update(ohlc);
    this.volume.update({ time: bar.time, value: volume, color: bar.close >= bar.open ? "#8fd19e" : "#f4a6ab" });
    this.lastTime = bar.time;
    this.publish();
  }

  publish() {
    this.element.dataset.candles = String(this.bars.size);
    const last = this.bars.get(this.lastTime);
    this.element.dataset.lastClose = last ? String(last.close) : "";
  }
}
