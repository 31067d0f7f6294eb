// What the page says when a transfer ends: what happened, whether anything was saved, and what to do next,
// each once and in plain words. Pure functions (no DOM), so every end state can be read and tested in one place.
//
// A session records how it ended as an `outcome`: {code, reason, by, peer}
//   code    a protocol error code ("declined", "room_not_found", ...), or one of the page's own:
//           "done" (verified), "connection_lost" (closed without a code; by "local": could not be restored),
//           "not_resumable" (lost during a download, which cannot continue), "read_failed" (a local file);
//           "wrong_code" and "tampered" come from the relay or from this page's own checks
//   reason  free text that came with it; when `by` is "peer" it is the other party's words and is shown as a
//           quote from them, never as the page's own sentence
//   by      "you", "peer" (the other party), "relay", or "local" (this browser)
//   peer    the peer number the relay tagged it with (receivers are 1..N), if any

import { plural } from "./format.js";

/** "the receiver" when there is one, "receiver 2 of 3" when there are several. */
export function receiverName(peer, receivers) {
  if (receivers <= 1 || !Number.isInteger(peer) || peer < 1) return receivers <= 1 ? "the receiver" : "a receiver";
  return `receiver ${peer} of ${receivers}`;
}

function capitalize(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// What happened, per code, from each side. `other` is "the sender" or the receiver's name.
const WHAT = {
  declined: (side, other) => (side === "send" ? `${capitalize(other)} declined the files.` : "You declined the offer."),
  cancelled: (side, other, by) => (by === "you" ? "You cancelled the transfer." : `${capitalize(other)} cancelled the transfer.`),
  peer_left: (side, other) => `${capitalize(other)} left before the transfer finished.`,
  dropped: (side) => (side === "receive"
    ? "The connection to the relay was lost for longer than the relay waits for a party to come back, so the sender went on without this page."
    : "A receiver did not come back within the relay's resume window and was dropped."),
  room_not_found: () => "No transfer is waiting under this code.",
  wrong_code: () => "The code was wrong; nothing was sent; start again with a new code.",
  tampered: () => "Some data did not authenticate: it was changed on the way, so the transfer stopped and nothing more was saved.",
  room_full: () => "Every receiver place of this transfer is already taken.",
  room_taken: () => "Could not get a free code from the relay.",
  rate_limited: () => "The relay refused the connection: too many attempts from your network in the last minute.",
  too_many_rooms: () => "The relay is busy (too many transfers at once).",
  too_many_connections: () => "The relay refused the connection: too many connections from your network.",
  pairing_timeout: (side) => (side === "send" ? "Nobody opened the code in time, so the relay closed the room." : "The sender's room closed before everyone joined."),
  offer_timeout: (side) => (side === "send" ? "Nobody answered the offer in time, so the relay ended it." : "The offer waited too long for an answer, so the relay ended it."),
  idle_timeout: () => "The transfer stalled (nothing moved for too long), so the relay ended it.",
  handshake_timeout: () => "The connection to the relay was too slow to start.",
  checksum_mismatch: () => "Some data arrived damaged (a checksum did not match), so the transfer stopped.",
  size_mismatch: () => "A file arrived with a different size than offered, so the transfer stopped.",
  unsafe_path: () => "The offer named a file in a way that is not safe to save, so it was refused.",
  disk_full: (side, other) => (side === "send" ? `${capitalize(other)} ran out of space.` : "There is not enough space to save the files."),
  file_exists: (side, other) => (side === "send" ? `${capitalize(other)} already has a file of the same name (nothing is overwritten).` : "A file of the same name already exists in the chosen folder, and nothing is overwritten."),
  write_failed: (side, other) => (side === "send" ? `${capitalize(other)} could not save the files.` : "The files could not be saved."),
  transfer_too_large: () => "The files are larger than this relay allows in one transfer.",
  going_away: () => "The relay is restarting, so the transfer stopped.",
  unauthorized: () => "This relay needs a token, and this page has none.",
  forbidden_origin: () => "This relay does not accept pages from this address.",
  unsupported_version: () => "This page and the relay speak different protocol versions.",
  connection_lost: (side, other, by) => (by === "local"
    ? "The connection to the relay was lost and could not be restored."
    : "The connection to the relay was lost."),
  not_resumable: () => "The connection to the relay was lost, and a download to your downloads folder cannot continue "
    + "where it stopped, so this transfer cannot be resumed.",
  read_failed: () => "A file could not be read on this device.",
  malformed_message: () => "A message broke the transfer protocol, so the transfer stopped.",
  unexpected_message: () => "A message arrived out of order, so the transfer stopped.",
  unknown_type: () => "A message of an unknown kind arrived, so the transfer stopped.",
  message_too_big: () => "A message was larger than the relay allows, so the transfer stopped.",
  bad_request: () => "The relay refused the request.",
  internal_error: () => "Something went wrong inside the relay or this page.",
};

// What to do next, when it differs from the side's default.
const NEXT = {
  room_not_found: { receive: "Check the code (a number and three words, and each code works once) and try again." },
  wrong_code: { send: "Press Try again to send with a new code.", receive: "Ask the sender for a new code, then type it here." },
  tampered: { send: "Press Try again to send with a new code.", receive: "Ask the sender to send again." },
  room_full: { receive: "Ask the sender for a new code." },
  rate_limited: { send: "Wait a minute, then press Try again.", receive: "Wait a minute, then try again." },
  too_many_rooms: { send: "Try again in a few minutes.", receive: "Try again in a few minutes." },
  too_many_connections: { send: "Close other transfers, then press Try again.", receive: "Close other transfers, then try again." },
  going_away: { send: "Press Try again in a minute.", receive: "Ask the sender to send again in a minute." },
  transfer_too_large: { send: "Send fewer or smaller files." },
  file_exists: { receive: "Ask the sender to send again, and choose another folder." },
  disk_full: { receive: "Free some space, then ask the sender to send again." },
  declined: { receive: "" },
  unsupported_version: { send: "Reload the page.", receive: "Reload the page." },
  read_failed: { send: "Check the file, then press Try again." },
  not_resumable: { receive: "Ask the sender to send again, and save into a folder: a transfer into a folder resumes by itself after a lost connection." },
  dropped: { receive: "Ask the sender to send again." },
};

const DEFAULT_NEXT = {
  send: "Press Try again to send the same files with a new code.",
  receive: "Ask the sender to send again.",
};

// Reasons the clients of this project send by default: they repeat what the page already says, so no quote.
const BOILERPLATE = new Set(["cancelled by the sender", "cancelled by the receiver", "declined by the receiver"]);

function savedWords(side, saved, other) {
  const { files = 0, total = 0, keepsPartial = true } = saved || {};
  if (side === "receive") {
    if (files === 0) return "Nothing was saved.";
    if (!keepsPartial) {
      return `Nothing was saved. The ${files === 1 ? "file" : `${files} files`} that had arrived ${files === 1 ? "was" : "were"} `
        + "removed again: the files are kept only when every one of them arrived and authenticated.";
    }
    return `${plural(files, "file")} of ${total.toLocaleString("en")} ${files === 1 ? "was" : "were"} saved and verified; the rest ${total - files === 1 ? "was" : "were"} not.`;
  }
  if (files === 0) return `Nothing was delivered.`;
  return `${capitalize(other)} got ${plural(files, "file")} of ${total.toLocaleString("en")} before it stopped.`;
}

/**
 * The words for an ended session.
 * @param {object} end {side: "send"|"receive", state, outcome, receivers, saved: {files, total, keepsPartial}}
 * @returns {{tone: "ok"|"neutral"|"bad", text: string, quote: string|null, quoteBy: string|null}}
 */
export function endWords({ side, state, outcome = {}, receivers = 1, saved = {} }) {
  const code = outcome.code || (state === "verified" ? "done" : "connection_lost");
  const other = side === "send"
    ? receiverName(outcome.peer, receivers)
    : outcome.peer !== undefined && outcome.peer !== null && outcome.peer > 0 ? "another receiver" : "the sender";
  const fromPeer = outcome.by === "peer" && outcome.reason && !BOILERPLATE.has(outcome.reason) ? outcome.reason : null;
  if (state === "verified") {
    return { tone: "ok", text: "", quote: null, quoteBy: null };
  }
  const describe = WHAT[code];
  const what = describe ? describe(side, other, outcome.by) : `The transfer failed (${code.replaceAll("_", " ")}).`;
  // The relay's own message adds detail a person can use (a limit, a size); a peer's words go in the quote.
  const relayDetail = outcome.by === "relay" && !describe && outcome.reason ? ` ${outcome.reason}` : "";
  const localDetail = outcome.by === "local" && outcome.reason ? ` (${outcome.reason})` : "";
  const next = NEXT[code]?.[side] ?? DEFAULT_NEXT[side];
  const quiet = code === "declined" || (code === "cancelled" && outcome.by === "you");
  // A wrong code already says that nothing was sent, so it needs no sentence about what was saved.
  const kept = code === "wrong_code" ? "" : savedWords(side, saved, other);
  const text = [`${what}${relayDetail}${localDetail}`, kept, next].filter(Boolean).join(" ");
  return {
    tone: quiet || code === "cancelled" ? "neutral" : "bad",
    text,
    quote: fromPeer,
    quoteBy: fromPeer ? other : null,
  };
}
