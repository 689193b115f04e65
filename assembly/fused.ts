// Fused merge + count + scan to runs: each block of the destination is merged,
// counted and scanned while it is still in L1, so a round reads the bitmaps once.
import { lowMask } from "./bits";
import { JOURNAL_BLOCK_WORDS, journalBegin, journalBlocks, journalCommit, journalCount, journalResume, mergeRange } from "./merge";
import { beginRuns, finishRuns, runsInWords } from "./scan";
import { setResultCursor } from "./state";

// Merges words [firstWord, firstWord + wordCount) (last word: `lastBits` bits)
// of the k listed sources into dst, returns the number of newly set bits, and
// writes the runs of the merged range into out (at most `capacity`), clipped to
// the range. runsWritten() and lastCursor() tell how far the scan got: when the
// output filled, merging still completes and the host resumes the scan.
// With a journal (nonzero), blocks are committed as in mergeCountJournaled and a
// call on a journal left by a dead worker finishes its work exactly.
export function mergeCountScanRuns(
  dst: usize, sourceList: usize, k: u32, firstWord: u32, wordCount: u32, lastBits: u32,
  undo: usize, journal: usize, faultAfterBlock: i32, out: usize, capacity: u32,
): f64 {
  const startBit = firstWord << 6;
  const endBit = ((firstWord + wordCount - 1) << 6) + lastBits;
  beginRuns(endBit, endBit);
  if (wordCount == 0) {
    setResultCursor(startBit);
    return 0;
  }
  const blocks = (wordCount + JOURNAL_BLOCK_WORDS - 1) / JOURNAL_BLOCK_WORDS;
  let done: u32 = 0;
  let count: u64 = 0;
  if (journal != 0) {
    const packed = journalResume(journal, undo, dst, firstWord, wordCount);
    done = journalBlocks(packed);
    count = journalCount(packed);
  }
  let scanning = true;
  for (let b: u32 = 0; b < blocks; b++) {
    const word = firstWord + b * JOURNAL_BLOCK_WORDS;
    const words = min<u32>(JOURNAL_BLOCK_WORDS, wordCount - b * JOURNAL_BLOCK_WORDS);
    const bits = b == blocks - 1 ? lastBits : 64;
    // Blocks a dead worker already merged are only scanned again.
    if (b >= done) {
      if (journal != 0) {
        journalBegin(journal, undo, dst, word, words, count, b);
        if (<i32>b == faultAfterBlock) {
          mergeRange(dst, sourceList, k, word, words >>> 1, 64, false);
          return -1;
        }
      }
      count += mergeRange(dst, sourceList, k, word, words, bits, true);
      if (journal != 0) journalCommit(journal, count, b + 1);
    }
    if (scanning) {
      scanning = runsInWords(dst, word, word + words - 1, <u64>-1, lowMask(bits), out, capacity);
    }
  }
  if (scanning) finishRuns(dst, out, capacity);
  return <f64>count;
}
