//! Languages of messages: BCP 47 tags (RFC 5646), as a person's record
//! names them (`es-MX`) and as the dispatcher's configuration keys its
//! texts (`es`, `en`).
//!
//! The extension passes a person's language along with a claimed message
//! only if it is a well-formed tag (`normalize`); the dispatcher chooses the
//! text for it with `choose`. Well-formed is all that is checked: whether
//! a language has texts is the dispatcher's configuration's business.

use oxilangtag::LanguageTag;

/// The longest tag passed along (RFC 5646 section 4.4.1 asks for at least
/// 35 characters; a longer one is not a language a person chose).
pub const MAX_TAG_LEN: usize = 35;

/// The tag in its canonical case (`es-mx` -> `es-MX`), or None when `text`
/// is not a well-formed BCP 47 tag of at most MAX_TAG_LEN characters.
/// Surrounding blanks are ignored; private-use and grandfathered tags are
/// refused (no text could be chosen for them).
pub fn normalize(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_TAG_LEN {
        return None;
    }
    let tag = LanguageTag::parse_and_normalize(text).ok()?;
    let primary = tag.primary_language();
    if !(2..=8).contains(&primary.len()) || primary.eq_ignore_ascii_case("x") {
        return None;
    }
    Some(tag.into_inner())
}

/// The primary language subtag of a well-formed tag (`es` of `es-MX`).
pub fn primary(tag: &str) -> &str {
    tag.split('-').next().unwrap_or(tag)
}

/// Which of `available` (keys of configured texts) serves a message in
/// `wanted` (the person's language, then the agent's, most specific first):
/// for each wanted tag the same tag, else the same primary language (`es`
/// serves `es-MX`, and `es-MX` serves `es` when no `es` exists); None when
/// none matches. Comparisons ignore case, as BCP 47 does.
pub fn choose<'a, S: AsRef<str>>(wanted: &[&str], available: &'a [S]) -> Option<&'a str> {
    for tag in wanted {
        let exact = available
            .iter()
            .find(|a| a.as_ref().eq_ignore_ascii_case(tag));
        let same_language = || {
            let want = primary(tag);
            // the bare language first (es), then any region of it (es-MX)
            available
                .iter()
                .find(|a| a.as_ref().eq_ignore_ascii_case(want))
                .or_else(|| {
                    available
                        .iter()
                        .find(|a| primary(a.as_ref()).eq_ignore_ascii_case(want))
                })
        };
        if let Some(found) = exact.or_else(same_language) {
            return Some(found.as_ref());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_well_formed_tags_and_refuses_the_rest() {
        assert_eq!(normalize("es-mx").as_deref(), Some("es-MX"));
        assert_eq!(normalize(" en ").as_deref(), Some("en"));
        assert_eq!(normalize("zh-Hant-TW").as_deref(), Some("zh-Hant-TW"));
        assert_eq!(normalize("sr-latn-rs").as_deref(), Some("sr-Latn-RS"));
        for bad in [
            "",
            "   ",
            "e",
            "español",
            "es_MX",
            "es-",
            "-es",
            "x-private",
            "es MX",
            "<script>",
            "en-US-abcdefghi",
            "es-419-aaaaaaaa-bbbbbbbb-cccccccc-dd",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chooses_the_closest_configured_language() {
        let available = ["en", "es", "pt-BR"];
        assert_eq!(choose(&["es-MX", "en"], &available), Some("es"));
        assert_eq!(choose(&["ES"], &available), Some("es"));
        assert_eq!(choose(&["pt"], &available), Some("pt-BR"));
        assert_eq!(choose(&["pt-PT"], &available), Some("pt-BR"));
        assert_eq!(choose(&["fr", "en"], &available), Some("en"));
        assert_eq!(choose(&["fr"], &available), None);
        assert_eq!(choose(&["es-MX"], &["es-ES", "es-MX"]), Some("es-MX"));
        assert_eq!(choose::<&str>(&["en"], &[]), None);
    }
}
