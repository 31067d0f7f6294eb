// Room codes: four words of the BIP-39 English list joined by "-" (docs/protocol.md section 7).

import wordlistText from "../../../relay/wordlist.txt";

export const WORDS = Object.freeze(wordlistText.split("\n").map((word) => word.trim()).filter(Boolean));
export const WORDS_PER_CODE = 4;

if (WORDS.length !== 2048) throw new Error(`the bundled word list has ${WORDS.length} words, expected 2048`);

/** A fresh random code such as "actor-table-ocean-ring" (44 bits from crypto.getRandomValues). */
export function generateCode() {
  const picks = crypto.getRandomValues(new Uint16Array(WORDS_PER_CODE));
  // 2048 divides 65536, so masking to 11 bits keeps every word equally likely.
  return Array.from(picks, (value) => WORDS[value & 2047]).join("-");
}
