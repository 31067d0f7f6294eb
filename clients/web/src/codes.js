// Codes of protocol version 2: "<nameplate>-<words>" (docs/protocol.md section 8.1). The relay allocates the
// nameplate; the words are the secret, drawn here from the BIP-39 English list with crypto.getRandomValues, and
// never leave the page except inside the PAKE (never in a URL, a request or storage).

import wordlistText from "../../../relay/wordlist.txt";
import { generateWords } from "./crypto.js";

export const WORDS = Object.freeze(wordlistText.split("\n").map((word) => word.trim()).filter(Boolean));
/** Three words of 2,048: 33 bits, and each code allows one guess (a wrong one ends the room). */
export const WORDS_PER_CODE = 3;

if (WORDS.length !== 2048) throw new Error(`the bundled word list has ${WORDS.length} words, expected 2048`);

/** Fresh secret words such as "actor-table-ocean" (unbiased, from crypto.getRandomValues). */
export function generateSecretWords() {
  return generateWords(WORDS, WORDS_PER_CODE);
}
