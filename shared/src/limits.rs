//! Limits shared by the coordinator, the agent and the CLI, each with the
//! reason for its value.

/// Longest log line kept, in bytes. Build tools rarely print more than a few
/// hundred characters per line; a minified blob on one line would otherwise
/// fill the store. Longer lines are cut and end with [`TRUNCATED_MARKER`].
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

/// Appended to a log line that was cut at [`MAX_LOG_LINE_BYTES`].
pub const TRUNCATED_MARKER: &str = " [... line truncated by gantry]";

/// Largest gRPC message either side accepts. A job spec or a log line is a
/// few kilobytes; 4 MiB leaves room without letting one peer exhaust memory.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest message an agent sends, in encoded bytes: a quarter of
/// [`MAX_GRPC_MESSAGE_BYTES`], so whatever a message carries around its
/// payload never brings it near the cap, and large enough that a batch of
/// typical lines (about 100 bytes each) is bounded by count, not size.
pub const MAX_AGENT_MESSAGE_BYTES: usize = MAX_GRPC_MESSAGE_BYTES / 4;

/// Longest job summary an agent sends: room for a failure's last lines
/// (20 cut lines of [`MAX_LOG_LINE_BYTES`]) and the words around them.
pub const MAX_SUMMARY_BYTES: usize = 256 * 1024;

/// Longest name-like field an agent sends (a release's URL, image and
/// container): each is made from configured names and a port, far shorter.
pub const MAX_FIELD_BYTES: usize = 4 * 1024;

/// Cuts `text` to at most [`MAX_LOG_LINE_BYTES`] (on a character boundary),
/// marking the cut so a reader knows the line is incomplete.
pub fn cap_log_line(text: String) -> String {
    cap_text(text, MAX_LOG_LINE_BYTES)
}

/// Cuts `text` to at most `max` bytes (on a character boundary, `max` at
/// least the marker's length), ending it with [`TRUNCATED_MARKER`].
pub fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(TRUNCATED_MARKER.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED_MARKER);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_are_kept_whole() {
        assert_eq!(cap_log_line("hello".into()), "hello");
    }

    #[test]
    fn long_lines_are_cut_with_a_marker() {
        let line = "é".repeat(MAX_LOG_LINE_BYTES);
        let cut = cap_log_line(line);
        assert!(cut.len() <= MAX_LOG_LINE_BYTES);
        assert!(cut.ends_with(TRUNCATED_MARKER));
    }
}
