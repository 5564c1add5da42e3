// The "Matrix" canvas: one column per individual, one falling character per result.

const KANJI = "日月火水木金土年人大小中山川田目耳手足力口王玉石竹米糸虫貝車雨電空気天地心生死上下左右";
const FONT = '"MS Gothic", "Noto Sans CJK JP", "Noto Sans JP", "IPAGothic", "Hiragino Kaku Gothic ProN", monospace';
// Used when no installed font has katakana/kanji (they would all draw as the same empty box).
const FALLBACK = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZΓΔΘΛΞΠΣΦΨΩ#$%&*+=<>?@";

function glyphImage(ctx, ch) {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 24, 24);
  ctx.fillStyle = "#fff";
  ctx.fillText(ch, 2, 2);
  const d = ctx.getImageData(0, 0, 24, 24).data;
  let h = 0;
  for (let i = 0; i < d.length; i += 4) h = (Math.imul(h, 31) + d[i]) | 0;
  return h;
}

/** True when the fonts draw distinct katakana and kanji (not one "tofu" box for all). */
function hasCJK() {
  try {
    const ctx = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
    ctx.canvas.width = ctx.canvas.height = 24;
    ctx.font = `20px ${FONT}`;
    ctx.textBaseline = "top";
    return glyphImage(ctx, "ア") !== glyphImage(ctx, "ン") && glyphImage(ctx, "日") !== glyphImage(ctx, "月");
  } catch {
    return true;
  }
}

export const GLYPHS = (() => {
  if (!hasCJK()) return [...FALLBACK];
  const out = [];
  for (let c = 0x30a1; c <= 0x30fa; c++) out.push(String.fromCharCode(c)); // katakana
  for (const d of "0123456789") out.push(d);
  for (const k of KANJI) out.push(k);
  return out;
})();

export const COLORS = { red: "#ff2a2a", green: "#00ff41", dim: "#007a1f", mark: "#ffd700", novel: "#c0c0c0" };
export const LEARNING_ALPHA = 0.35; // a result with "learning": true (thin evidence) is drawn this faint

/** The character of an action: FNV-1a hash of its UTF-16 code units. */
export function glyphFor(action) {
  let h = 0x811c9dc5;
  const s = String(action);
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return GLYPHS[(h >>> 0) % GLYPHS.length];
}

/** Colour of a result: red at or above the red threshold, dim green below zero, green otherwise. */
export function colorFor(zscore, red) {
  if (zscore >= red) return COLORS.red;
  if (zscore < 0) return COLORS.dim;
  return COLORS.green;
}

const MAX_KEYS = 50000; // individuals remembered for their column; oldest forgotten first

export class Matrix {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.size = 16;
    this.cols = 1;
    this.rows = 1;
    this.width = 0;
    this.height = 0;
    this.columnOf = new Map(); // individual key -> column
    this.nextColumn = 0;
  }

  /** Size the canvas and (re)compute columns and rows; clears the picture. */
  layout(width, height, size) {
    const dpr = window.devicePixelRatio || 1;
    this.width = Math.max(1, Math.floor(width));
    this.height = Math.max(1, Math.floor(height));
    this.size = size;
    this.canvas.style.width = `${this.width}px`;
    this.canvas.style.height = `${this.height}px`;
    this.canvas.width = Math.floor(this.width * dpr);
    this.canvas.height = Math.floor(this.height * dpr);
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.cols = Math.max(1, Math.floor(this.width / size));
    this.rows = Math.max(1, Math.floor(this.height / size));
    this.head = new Int32Array(this.cols); // next row of each column
    this.label = new Array(this.cols).fill(null); // last individual drawn in each column
    this.owners = new Int32Array(this.cols); // individuals assigned to each column
    this.columnOf.clear();
    this.nextColumn = 0;
    this.clear();
  }

  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.width, this.height);
  }

  /** One fade step: everything drawn so far gets a bit darker. */
  fade(alpha) {
    this.ctx.fillStyle = `rgba(0,0,0,${alpha})`;
    this.ctx.fillRect(0, 0, this.width, this.height);
  }

  /** Column of an individual: assigned on first sight, wrapping when they outnumber columns. */
  column(key) {
    let col = this.columnOf.get(key);
    if (col === undefined) {
      col = this.nextColumn % this.cols;
      this.nextColumn++;
      this.owners[col]++;
      if (this.columnOf.size >= MAX_KEYS) {
        const oldest = this.columnOf.keys().next().value;
        this.owners[this.columnOf.get(oldest)]--;
        this.columnOf.delete(oldest);
      }
      this.columnOf.set(key, col);
    }
    return col;
  }

  /** Draw a batch of results; the newest character of a column falls one row further. */
  draw(results, red, keyOf) {
    const ctx = this.ctx;
    const s = this.size;
    ctx.font = `${s}px ${FONT}`;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    let reds = 0;
    for (const r of results) {
      const col = this.column(keyOf(r));
      const row = this.head[col];
      this.head[col] = (row + 1) % this.rows;
      this.label[col] = r;
      const x = col * s;
      const y = row * s;
      ctx.fillStyle = "#000";
      ctx.fillRect(x, y, s, s);
      const z = Number(r.zscore);
      const muted = r.muted === true; // a mute rule: never drawn as an outlier (dim green)
      if (z >= red && !muted) reds++;
      ctx.fillStyle = muted ? COLORS.dim : colorFor(z, red);
      // Thin evidence (few events, or a small population) is never drawn as bright as a certainty.
      ctx.globalAlpha = r.learning === true ? LEARNING_ALPHA : 1;
      ctx.fillText(glyphFor(r.action), x + s / 2, y, s);
      ctx.globalAlpha = 1;
      // A corner mark: the scope's first event of this action (gold), the individual's first (grey).
      if (r.new_action === true || r.novel === true) {
        const m = Math.max(2, Math.round(s / 6));
        ctx.fillStyle = r.new_action === true ? COLORS.mark : COLORS.novel;
        ctx.fillRect(x, y, m, m);
      }
    }
    return reds;
  }

  /** What sits under the pointer: the last result drawn in that column and how many share it. */
  at(x) {
    const col = Math.floor(x / this.size);
    if (col < 0 || col >= this.cols) return null;
    return { col, last: this.label[col], owners: this.owners[col] };
  }
}

/**
 * Buffers results between animation frames. When more arrive than can be drawn,
 * keeps every result at or above the red threshold (newest first if even those
 * overflow) and a uniform sample (reservoir) of the others.
 */
export class Sampler {
  constructor(capacity = 4000) {
    this.capacity = capacity;
    this.reset();
    this.sampledOut = 0;
  }

  reset() {
    this.red = [];
    this.other = [];
    this.otherSeen = 0;
  }

  push(result, isRed) {
    if (isRed) {
      this.red.push(result);
      if (this.red.length > 2 * this.capacity) {
        const cut = this.red.length - this.capacity;
        this.red.splice(0, cut);
        this.sampledOut += cut;
      }
      return;
    }
    this.otherSeen++;
    if (this.other.length < this.capacity) {
      this.other.push(result);
    } else {
      const j = Math.floor(Math.random() * this.otherSeen);
      if (j < this.capacity) this.other[j] = result;
    }
  }

  get size() {
    return this.red.length + this.otherSeen;
  }

  /** Up to ``budget`` results to draw now (all reds, even past the budget, up to 4x). */
  take(budget) {
    let red = this.red;
    if (red.length > 4 * budget) {
      this.sampledOut += red.length - 4 * budget;
      red = red.slice(red.length - 4 * budget);
    }
    const room = Math.max(0, budget - red.length);
    let other = this.other;
    if (other.length > room) {
      // Partial Fisher-Yates: a uniform sample of ``room`` results.
      for (let i = 0; i < room; i++) {
        const j = i + Math.floor(Math.random() * (other.length - i));
        const t = other[i];
        other[i] = other[j];
        other[j] = t;
      }
      other = other.slice(0, room);
    }
    this.sampledOut += this.otherSeen - other.length;
    const out = red.length ? red.concat(other) : other;
    this.reset();
    return out;
  }
}
