// Run the page's crypto module under Node so tests/web/test_crypto_js.py can hold it against clients/crypto.py.
//
//   node crypto-cases.mjs            read one JSON object of cases on stdin, print one JSON object of results
//   node crypto-cases.mjs peer ROLE  be one party of a live transfer, one JSON object per line each way:
//        -> {"code", "backend", ["files": [hex...], "chunk_size"] (sender only)}   first line: the setup
//        <-> {"pake": hex}, {"confirm": hex}, then the sender sends {"content_key", "epoch_salt", "offer"},
//        {"chunk": hex}... {"end": true}; the receiver answers {"done": sealed hex}. A failure prints
//        {"error": code} and exits 0, so the test sees both sides' outcome.

import { createInterface } from "node:readline";
import { sha256 } from "@noble/hashes/sha2.js";
import * as c from "../src/crypto.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (text) => Uint8Array.from(Buffer.from(text, "hex"));
const utf8 = (text) => new TextEncoder().encode(text);
const outcome = async (fn) => {
  try {
    await fn();
    return "ok";
  } catch (error) {
    if (error instanceof c.CryptoError) return error.code;
    throw error;
  }
};

/** python-spake2's test PRG (spake2/test/common.py): blocks sha256("prng-<counter>-<seed>"). */
function prg(seed) {
  let counter = 0;
  let buffer = new Uint8Array(0);
  return (count) => {
    while (buffer.length < count) {
      buffer = c.concatBytes(buffer, sha256(c.concatBytes(utf8(`prng-${counter}-`), seed)));
      counter += 1;
    }
    const out = buffer.slice(0, count);
    buffer = buffer.slice(count);
    return out;
  };
}

const BACKENDS = { webcrypto: c.webCryptoBackend(), noble: c.nobleBackend };

async function runCases(cases) {
  const spake2 = (() => {
    const a = new c.Spake2("A", utf8("password"), new Uint8Array(0), new Uint8Array(0), prg(utf8("A")));
    const b = new c.Spake2("B", utf8("password"), new Uint8Array(0), new Uint8Array(0), prg(utf8("B")));
    const [m1A, m1B] = [a.start(), b.start()];
    return {
      m1A: hex(m1A), m1B: hex(m1B), pw_scalar: a.pwScalar.toString(), xy_A: a.xyScalar.toString(),
      xy_B: b.xyScalar.toString(), kA: hex(a.finish(m1B)), kB: hex(b.finish(m1A)),
    };
  })();
  const results = {
    codes: cases.codes.map((text) => {
      const code = c.normalizeCode(text);
      try {
        const { nameplate, words } = c.splitCode(code);
        return [code, nameplate, words];
      } catch (error) {
        return [code, error.code];
      }
    }),
    params: { M: hex(c.spake2Params.M), N: hex(c.spake2Params.N) },
    password_scalars: cases.passwords.map((pw) => c.spake2PasswordScalar(unhex(pw)).toString()),
    spake2,
    pake_passwords: cases.pake.codes.map((code) => {
      const { nameplate, words } = c.splitCode(code);
      return hex(c.pakePassword(nameplate, words));
    }),
    bad_pake_messages: [],
    backends: {},
  };
  for (const message of cases.bad_pake_messages) {
    const side = new c.Pake(c.SENDER, cases.pake.codes[0]);
    results.bad_pake_messages.push(await outcome(() => side.finish(unhex(message))));
  }
  for (const [name, backend] of Object.entries(BACKENDS)) results.backends[name] = await runBackend(cases, backend);
  return results;
}

async function runBackend(cases, backend) {
  const { pake } = cases;
  const sender = new c.Pake(c.SENDER, pake.codes[0], { entropy: prg(utf8(pake.sender_seed)), backend });
  const receivers = pake.codes.map(
    (code) => new c.Pake(c.RECEIVER, code, { entropy: prg(utf8(pake.receiver_seed)), backend }),
  );
  const senderKeys = await sender.finish(receivers[0].outbound);
  const pairs = [];
  for (const receiver of receivers) {
    const keys = await receiver.finish(sender.outbound);
    pairs.push({
      outbound: hex(receiver.outbound),
      transcript: hex(keys.transcript),
      keys: Object.fromEntries(Object.entries(keys.keys).map(([name, key]) => [name, hex(key)])),
      confirm_receiver: hex(await keys.confirmation(c.RECEIVER)),
      check_sender: await outcome(async () => keys.checkConfirmation(c.SENDER, await senderKeys.confirmation(c.SENDER))),
    });
  }
  const { stream, control } = cases;
  const plan = new c.StreamPlan(stream.segments, stream.chunk_size);
  const key = await c.dataKey(unhex(stream.content_key), unhex(stream.epoch_salt), backend);
  const sealer = await c.StreamSealer.create(key, plan, backend);
  const sealed = [];
  for (const plaintext of stream.plaintexts) sealed.push(hex(await sealer.sealNext(unhex(plaintext))));
  const attacks = [];
  for (const attack of stream.attacks) {
    const opener = await c.StreamOpener.create(key, plan, backend);
    const opened = [];
    attacks.push([await outcome(async () => {
      for (const [index, flip] of attack) {
        const chunk = unhex(stream.python_sealed[index]);
        if (flip !== null) chunk[flip] ^= 1;
        opened.push(hex((await opener.openNext(chunk)).plaintext));
      }
      opener.finish();
    }), opened]);
  }
  // The page opens up to four chunks at once (receiver.js): the same attacks, every chunk handed to the opener
  // before any result is looked at, must end the same way.
  const attacksAtOnce = [];
  for (const attack of stream.attacks) {
    const opener = await c.StreamOpener.create(key, plan, backend);
    const openings = attack.map(([index, flip]) => {
      const chunk = unhex(stream.python_sealed[index]);
      if (flip !== null) chunk[flip] ^= 1;
      return opener.openNext(chunk);
    });
    for (const opening of openings) opening.catch(() => {});
    const opened = [];
    attacksAtOnce.push([await outcome(async () => {
      for (const opening of openings) opened.push(hex((await opening).plaintext));
      opener.finish();
    }), opened]);
  }
  const pairKeys = await c.PairKeys.derive(unhex(control.shared), unhex(control.transcript), backend);
  const channelS = await pairKeys.controlChannel(c.SENDER);
  const sealedControl = [];
  for (const message of control.messages) sealedControl.push(hex(await channelS.seal(unhex(message))));
  const openedControl = [];
  for (const message of control.python_sealed_to_sender) openedControl.push(hex(await channelS.open(unhex(message))));
  const afterResync = await pairKeys.controlChannel(c.SENDER, unhex(control.resync));
  const sealedAfterResync = hex(await afterResync.seal(unhex(control.messages[0])));
  const controlAttacks = [];
  for (const sequence of control.attacks) {
    const channel = await pairKeys.controlChannel(c.RECEIVER);
    controlAttacks.push(await outcome(async () => {
      for (const index of sequence) await channel.open(unhex(control.python_sealed_to_receiver[index]));
    }));
  }
  // Resume: each seat token's verifier and the next token; a resumed epoch's plan starts inside a file.
  const resumeTokens = [];
  for (const token of cases.resume.tokens) {
    const next = await c.nextResumeToken(unhex(token), backend);
    resumeTokens.push([c.resumeVerifier(unhex(token)), hex(next), c.resumeVerifier(next)]);
  }
  const { resumed } = cases;
  const resumedPlan = new c.StreamPlan(resumed.segments, resumed.chunk_size);
  const resumedKey = await c.dataKey(unhex(stream.content_key), unhex(resumed.epoch_salt), backend);
  const resumedOpener = await c.StreamOpener.create(resumedKey, resumedPlan, backend);
  const resumedOpened = [];
  for (const chunk of resumed.python_sealed) {
    const { file, offset, last, plaintext } = await resumedOpener.openNext(unhex(chunk));
    resumedOpened.push([file, offset, last, hex(plaintext)]);
  }
  resumedOpener.finish();
  const resumedSealer = await c.StreamSealer.create(resumedKey, resumedPlan, backend);
  const resumedSealed = [];
  for (const [, , , plaintext] of resumedOpened) resumedSealed.push(hex(await resumedSealer.sealNext(unhex(plaintext))));
  return {
    resume_tokens: resumeTokens,
    resumed: {
      opened: resumedOpened, sealed: resumedSealed,
      plan: { chunk_count: resumedPlan.chunkCount(), ciphertext_size: resumedPlan.ciphertextSize() },
    },
    sender_outbound: hex(sender.outbound),
    confirm_sender: hex(await senderKeys.confirmation(c.SENDER)),
    pairs,
    data_key: hex(key),
    sealed,
    attacks,
    attacks_at_once: attacksAtOnce,
    sealed_content_key: hex(await pairKeys.sealContentKey(unhex(stream.content_key))),
    opened_content_key: hex(await pairKeys.openContentKey(unhex(control.python_sealed_content_key))),
    sealed_control: sealedControl,
    opened_control: openedControl,
    control_attacks: controlAttacks,
    sealed_after_resync: sealedAfterResync,
    plan: { chunk_count: plan.chunkCount(), ciphertext_size: plan.ciphertextSize() },
  };
}

// --- one live party ------------------------------------------------------------------------------------------

async function runPeer(role) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]();
  const receive = async () => {
    const { value, done } = await lines.next();
    if (done) throw new Error("stdin closed");
    return JSON.parse(value);
  };
  const send = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
  const setup = await receive();
  const backend = BACKENDS[setup.backend];
  try {
    const pake = new c.Pake(role, c.normalizeCode(setup.code), { backend });
    send({ pake: hex(pake.outbound) });
    const keys = await pake.finish(unhex((await receive()).pake));
    const other = role === c.SENDER ? c.RECEIVER : c.SENDER;
    if (role === c.SENDER) {
      send({ confirm: hex(await keys.confirmation(role)) });
      await keys.checkConfirmation(other, unhex((await receive()).confirm));
      const contentKey = c.newContentKey();
      const epochSalt = c.newEpochSalt();
      const files = setup.files.map(unhex);
      const segments = files.map((bytes, file) => ({ file, start: 0, end: bytes.length }));
      const channel = await keys.controlChannel(role);
      const offer = utf8(JSON.stringify({ segments, chunk_size: setup.chunk_size }));
      send({
        content_key: hex(await keys.sealContentKey(contentKey)), epoch_salt: hex(epochSalt),
        offer: hex(await channel.seal(offer)),
      });
      const plan = new c.StreamPlan(segments, setup.chunk_size);
      const sealer = await c.StreamSealer.create(await c.dataKey(contentKey, epochSalt, backend), plan, backend);
      for (const position of plan.positions()) {
        const bytes = files[position.file].subarray(position.offset, position.offset + position.length);
        send({ chunk: hex(await sealer.sealNext(bytes)) });
      }
      send({ end: true });
      const done = JSON.parse(new TextDecoder().decode(await channel.open(unhex((await receive()).done))));
      const expected = files.map((bytes) => hex(sha256(bytes)));
      send({ result: JSON.stringify(done.sha256) === JSON.stringify(expected) ? "verified" : "mismatch" });
    } else {
      await keys.checkConfirmation(other, unhex((await receive()).confirm));
      send({ confirm: hex(await keys.confirmation(role)) });
      const start = await receive();
      const contentKey = await keys.openContentKey(unhex(start.content_key));
      const channel = await keys.controlChannel(role);
      const offer = JSON.parse(new TextDecoder().decode(await channel.open(unhex(start.offer))));
      const plan = new c.StreamPlan(offer.segments, offer.chunk_size);
      const key = await c.dataKey(contentKey, unhex(start.epoch_salt), backend);
      const opener = await c.StreamOpener.create(key, plan, backend);
      const files = offer.segments.map(({ end }) => new Uint8Array(end));
      for (;;) {
        const message = await receive();
        if (message.end) break;
        const chunk = await opener.openNext(unhex(message.chunk));
        files[chunk.file].set(chunk.plaintext, chunk.offset);
      }
      opener.finish();
      const digests = files.map((bytes) => hex(sha256(bytes)));
      send({ done: hex(await channel.seal(utf8(JSON.stringify({ sha256: digests })))) });
    }
  } catch (error) {
    if (!(error instanceof c.CryptoError)) throw error;
    send({ error: error.code });
  }
}

if (process.argv[2] === "peer") {
  await runPeer(process.argv[3]);
} else {
  let input = "";
  for await (const piece of process.stdin) input += piece;
  process.stdout.write(JSON.stringify(await runCases(JSON.parse(input))));
}
