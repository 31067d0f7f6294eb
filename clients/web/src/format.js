// Numbers for people: sizes, rates, durations, and a rate meter for progress with ETA.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.5 KiB". */
export function formatBytes(bytes) {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

/** Seconds -> "1 h 02 min", "3 min 05 s", "12 s". */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "unknown";
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

/**
 * Rate over a sliding window of recent samples, so the shown rate follows the last few seconds rather than
 * the whole transfer. `now` is passed in (milliseconds) so it is testable.
 */
export class RateMeter {
  constructor(windowMs = 3000) {
    this.windowMs = windowMs;
    this.samples = [];
  }

  /** Record that `done` bytes were finished at time `now`. */
  sample(done, now) {
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[1][0] >= this.windowMs) this.samples.shift();
  }

  /** Bytes per second over the window, or 0 before two samples. */
  rate() {
    if (this.samples.length < 2) return 0;
    const [t0, d0] = this.samples[0];
    const [t1, d1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((d1 - d0) * 1000) / (t1 - t0) : 0;
  }

  /** "12.3 MiB/s, 1 min 05 s left" for `remaining` bytes. */
  describe(remaining) {
    const rate = this.rate();
    if (rate <= 0) return "";
    return `${formatBytes(rate)}/s, ${formatDuration(remaining / rate)} left`;
  }
}

/** 1 -> "1 file", 1000 -> "1,000 files"; `many` defaults to `one` + "s". */
export function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString("en")} ${count === 1 ? one : many}`;
}

/** "3 files and 1 folder", "1 file", "2 empty folders": what a selection or offer holds. */
export function describeCounts(files, folders, folderWord = "empty folder") {
  const parts = [];
  if (files > 0 || folders === 0) parts.push(plural(files, "file"));
  if (folders > 0) parts.push(plural(folders, folderWord));
  return parts.join(" and ");
}

/** "4.2 s" / "2 min 05 s" taken and the average rate, for a finished transfer. */
export function describeFinish(bytes, elapsedMs) {
  const seconds = elapsedMs / 1000;
  const took = seconds < 10 ? `${seconds.toFixed(1)} s` : formatDuration(seconds);
  return seconds > 0 && bytes > 0 ? `Took ${took}, ${formatBytes(bytes / seconds)}/s on average.` : `Took ${took}.`;
}
