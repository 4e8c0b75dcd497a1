//! Prompt-lookup drafts for exact speculation: the tokens that followed the most recent earlier
//! occurrence of the sequence's last few tokens. SpatialThinker answers repeat themselves — a
//! relationship's ends are ids declared in `objects`, the answer repeats an option's text, free
//! text repeats the question — so such a draft is often what the model writes next. The engine
//! feeds the draft in the same decoder pass as the next token and keeps the longest prefix that
//! the sampler picks itself, position by position, so the output is the same as without it.

/// Up to `max_draft` tokens that followed the most recent earlier occurrence of the last `n`
/// tokens of `history` (the longest `n` from `max_ngram` down to `min_ngram` that occurs), cut
/// before any token of `stop_at` (e.g. image placeholders, which have no embedding of their own).
pub fn prompt_lookup(
    history: &[u32],
    max_ngram: usize,
    min_ngram: usize,
    max_draft: usize,
    stop_at: &[u32],
) -> Vec<u32> {
    if max_draft == 0 || min_ngram == 0 {
        return Vec::new();
    }
    for n in (min_ngram..=max_ngram).rev() {
        if history.len() <= n {
            continue;
        }
        let tail = &history[history.len() - n..];
        // Most recent earlier occurrence: scan start positions from the right, excluding the tail itself.
        let found = (0..history.len() - n).rev().find(|&i| &history[i..i + n] == tail);
        if let Some(i) = found {
            let after = &history[i + n..];
            let draft: Vec<u32> = after.iter().take(max_draft).take_while(|t| !stop_at.contains(t)).copied().collect();
            if !draft.is_empty() {
                return draft;
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::prompt_lookup;

    #[test]
    fn drafts_what_followed_the_latest_match() {
        // ... 1 2 3 [9 9] ... 1 2 3 [7 8] ... 1 2 3 → 7 8 (the latest occurrence wins)
        let h = [1, 2, 3, 9, 9, 5, 1, 2, 3, 7, 8, 6, 1, 2, 3];
        assert_eq!(prompt_lookup(&h, 3, 2, 2, &[]), vec![7, 8]);
        assert_eq!(prompt_lookup(&h, 3, 2, 8, &[]), vec![7, 8, 6, 1, 2, 3]);
        // Shorter n-grams when the longer one never occurred before.
        let h = [4, 2, 3, 5, 6, 1, 2, 3];
        assert_eq!(prompt_lookup(&h, 3, 2, 2, &[]), vec![5, 6]);
        assert_eq!(prompt_lookup(&h, 3, 3, 2, &[]), Vec::<u32>::new());
    }

    #[test]
    fn stops_before_excluded_tokens_and_handles_short_histories() {
        let h = [1, 2, 99, 3, 1, 2];
        assert_eq!(prompt_lookup(&h, 2, 2, 4, &[99]), Vec::<u32>::new());
        assert_eq!(prompt_lookup(&h, 2, 2, 4, &[]), vec![99, 3, 1, 2]);
        assert_eq!(prompt_lookup(&[1], 3, 1, 4, &[]), Vec::<u32>::new());
        assert_eq!(prompt_lookup(&[], 3, 1, 4, &[]), Vec::<u32>::new());
        assert_eq!(prompt_lookup(&[1, 1], 2, 1, 0, &[]), Vec::<u32>::new());
        // Repeated token: the draft continues the run.
        assert_eq!(prompt_lookup(&[5, 5, 5, 5], 2, 1, 3, &[]), vec![5]);
    }
}
