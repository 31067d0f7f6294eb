// A stored (uncompressed) ZIP writer that never holds file data: it only makes the headers that go around
// the bytes, so a zip of any size can be streamed as it downloads. No DOM, no I/O: the caller writes
//   writer.directory(path)          for each empty folder
//   writer.fileStart(path, size)    then the file's `size` bytes, then writer.fileEnd(crc32)
//   writer.finish()                 once, at the end (the central directory)
// and sends each returned Uint8Array (and the file bytes in between) in that order.
//
// Sizes are known up front (they come from the offer), but the CRC-32 of a file is known only after its last
// byte, so every file carries a data descriptor after its data (general purpose flag bit 3). ZIP64 records are
// written where a size, an offset or the number of entries does not fit the classic 32/16-bit fields
// (APPNOTE.TXT 4.3.9, 4.4, 4.5.3): files of 4 GiB and more, archives past 4 GiB, more than 65,535 entries.
// Names are UTF-8 (flag bit 11).

const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;
const FLAG_UTF8 = 0x0800;
const FLAG_DESCRIPTOR = 0x0008;
const VERSION_CLASSIC = 20;
const VERSION_ZIP64 = 45;
const MADE_BY_UNIX = (3 << 8) | VERSION_ZIP64;
const MODE_FILE = 0o100644;
const MODE_DIR = 0o040755;
const DOS_DIR = 0x10;

const utf8 = new TextEncoder();

/** MS-DOS date and time of `date` (local time, 2-second steps; 1980 is the earliest the format can say). */
export function dosDateTime(date) {
  const year = Math.max(1980, date.getFullYear());
  return {
    date: ((year - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate(),
    time: (date.getHours() << 11) | (date.getMinutes() << 5) | Math.floor(date.getSeconds() / 2),
  };
}

class Bytes {
  constructor(length) {
    this.array = new Uint8Array(length);
    this.view = new DataView(this.array.buffer);
    this.at = 0;
  }

  u16(value) {
    this.view.setUint16(this.at, value, true);
    this.at += 2;
    return this;
  }

  u32(value) {
    this.view.setUint32(this.at, value, true);
    this.at += 4;
    return this;
  }

  u64(value) {
    this.view.setBigUint64(this.at, BigInt(value), true);
    this.at += 8;
    return this;
  }

  raw(bytes) {
    this.array.set(bytes, this.at);
    this.at += bytes.length;
    return this;
  }
}

/** Builds the headers of one stored zip; see the module comment for the order of calls. */
export class ZipWriter {
  /** `forceZip64` writes ZIP64 records for every entry (tests use it to check them without 4 GiB of data). */
  constructor({ now = new Date(), forceZip64 = false } = {}) {
    this.stamp = dosDateTime(now);
    this.forceZip64 = forceZip64;
    this.offset = 0; // bytes of the archive produced so far, data included
    this.entries = []; // central directory rows: {name, size, crc, offset, dir}
    this.open = null;
    this.finished = false;
  }

  /** The local header of an empty folder `path` (no trailing slash needed). */
  directory(path) {
    this.#idle();
    const name = utf8.encode(path.endsWith("/") ? path : `${path}/`);
    const header = this.#localHeader(name, 0, false, FLAG_UTF8);
    this.entries.push({ name, size: 0, crc: 0, offset: this.offset, dir: true });
    this.offset += header.length;
    return header;
  }

  /** The local header of a file of `size` bytes; its bytes follow, then fileEnd(crc). */
  fileStart(path, size) {
    this.#idle();
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad size ${size}`);
    const name = utf8.encode(path);
    const zip64 = this.forceZip64 || size >= U32_MAX;
    const header = this.#localHeader(name, size, zip64, FLAG_UTF8 | FLAG_DESCRIPTOR);
    this.open = { name, size, zip64, offset: this.offset };
    this.offset += header.length + size;
    return header;
  }

  /** The data descriptor after a file's bytes, with the CRC-32 of those bytes. */
  fileEnd(crc) {
    if (this.open === null) throw new Error("fileEnd without fileStart");
    const { name, size, zip64, offset } = this.open;
    this.open = null;
    const out = new Bytes(zip64 ? 24 : 16).u32(0x08074b50).u32(crc >>> 0);
    if (zip64) out.u64(size).u64(size);
    else out.u32(size).u32(size);
    this.entries.push({ name, size, crc: crc >>> 0, offset, dir: false });
    this.offset += out.array.length;
    return out.array;
  }

  /** The central directory and end records; nothing may be added afterwards. */
  finish() {
    this.#idle();
    this.finished = true;
    const rows = this.entries.map((entry) => this.#centralRow(entry));
    const cdOffset = this.offset;
    const cdSize = rows.reduce((sum, row) => sum + row.length, 0);
    const count = this.entries.length;
    const zip64 = this.forceZip64 || count >= U16_MAX || cdOffset >= U32_MAX || cdSize >= U32_MAX;
    const tail = [];
    if (zip64) {
      const recordOffset = cdOffset + cdSize;
      tail.push(new Bytes(56).u32(0x06064b50).u64(44).u16(MADE_BY_UNIX).u16(VERSION_ZIP64).u32(0).u32(0)
        .u64(count).u64(count).u64(cdSize).u64(cdOffset).array);
      tail.push(new Bytes(20).u32(0x07064b50).u32(0).u64(recordOffset).u32(1).array);
    }
    const short = (value, max) => (zip64 && (this.forceZip64 || value >= max) ? max : value);
    tail.push(new Bytes(22).u32(0x06054b50).u16(0).u16(0).u16(short(count, U16_MAX)).u16(short(count, U16_MAX))
      .u32(short(cdSize, U32_MAX)).u32(short(cdOffset, U32_MAX)).u16(0).array);
    const parts = [...rows, ...tail];
    const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    this.offset += out.length;
    return out;
  }

  #idle() {
    if (this.open !== null) throw new Error("the previous file is not finished");
    if (this.finished) throw new Error("the zip is finished");
  }

  #localHeader(name, size, zip64, flags) {
    const extra = zip64 ? new Bytes(20).u16(0x0001).u16(16).u64(0).u64(0).array : new Uint8Array(0);
    const sizeField = zip64 ? U32_MAX : 0; // the real sizes follow in the data descriptor (flag bit 3)
    return new Bytes(30 + name.length + extra.length)
      .u32(0x04034b50).u16(zip64 ? VERSION_ZIP64 : VERSION_CLASSIC).u16(flags).u16(0)
      .u16(this.stamp.time).u16(this.stamp.date).u32(0).u32(sizeField).u32(sizeField)
      .u16(name.length).u16(extra.length).raw(name).raw(extra).array;
  }

  #centralRow({ name, size, crc, offset, dir }) {
    const bigSize = this.forceZip64 || size >= U32_MAX;
    const bigOffset = this.forceZip64 || offset >= U32_MAX;
    const fields = [];
    if (bigSize) fields.push(size, size);
    if (bigOffset) fields.push(offset);
    const extra = new Bytes(fields.length ? 4 + 8 * fields.length : 0);
    if (fields.length) {
      extra.u16(0x0001).u16(8 * fields.length);
      for (const field of fields) extra.u64(field);
    }
    const flags = dir ? FLAG_UTF8 : FLAG_UTF8 | FLAG_DESCRIPTOR;
    const mode = dir ? MODE_DIR : MODE_FILE;
    return new Bytes(46 + name.length + extra.array.length)
      .u32(0x02014b50).u16(MADE_BY_UNIX).u16(fields.length ? VERSION_ZIP64 : VERSION_CLASSIC).u16(flags).u16(0)
      .u16(this.stamp.time).u16(this.stamp.date).u32(crc)
      .u32(bigSize ? U32_MAX : size).u32(bigSize ? U32_MAX : size)
      .u16(name.length).u16(extra.array.length).u16(0).u16(0).u16(0)
      .u32(((mode << 16) | (dir ? DOS_DIR : 0)) >>> 0).u32(bigOffset ? U32_MAX : offset)
      .raw(name).raw(extra.array).array;
  }
}

/** The archive's name for an offer: its one top folder ("photos.zip") when all entries share one, else "relay-files.zip". */
export function zipName(offer) {
  const paths = [...offer.files.map((entry) => entry.path), ...offer.dirs];
  const tops = new Set(paths.map((path) => path.split("/")[0]));
  const [top] = tops;
  const nested = paths.every((path) => path.includes("/")) || offer.dirs.includes(top);
  return tops.size === 1 && nested ? `${top}.zip` : "relay-files.zip";
}
