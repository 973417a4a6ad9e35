//! The words of code emails: a subject, a plain-text body and an HTML body
//! per language, written as MiniJinja templates with a small, fixed set of
//! placeholders (`PLACEHOLDERS`). Built-in texts in English and Spanish;
//! the configuration may add sets of its own (`[texts.NAME.LANGUAGE]`).
//!
//! Every template is compiled and checked when the configuration is loaded:
//! a syntax error, an unknown placeholder, or a body without `{{ code }}`
//! refuses the configuration, so a message can never go out half-rendered.
//! HTML bodies are escaped automatically (a display name with `<` or `&`
//! stays text); rendering is strict about undefined values.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// What a template may use, and what each is.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("code", "the code"),
    ("minutes", "whole minutes until it expires, at least 1"),
    (
        "expires_at",
        "when it expires, hh:mm in the person's time zone, else the agent's",
    ),
    ("time_zone", "that time zone's abbreviation (CST, JST, UTC)"),
    ("agent_name", "the agent's display name (may be empty)"),
];

/// The name of the built-in set.
pub const BUILT_IN: &str = "built-in";

/// The three templates of one language, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The values a message fills in.
pub struct Fill<'a> {
    pub code: &'a str,
    pub minutes: u64,
    pub expires_at: &'a str,
    pub time_zone: &'a str,
    pub agent_name: &'a str,
}

/// A rendered email.
#[derive(Debug)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Every set of texts, compiled: set name -> languages.
#[derive(Clone)]
pub struct Texts {
    env: Environment<'static>,
    languages: BTreeMap<String, Vec<String>>,
}

const PARTS: [&str; 3] = ["subject", "text", "html"];

/// Steps one rendering may take: the built-in texts take about a hundred.
/// A template that loops (over the code, say) may not hold the dispatcher.
const FUEL: u64 = 10_000;

/// The longest template source.
const MAX_SOURCE: usize = 64 * 1024;

/// The longest display name (a test rendering at load uses one this long).
pub const MAX_AGENT_NAME: usize = 200;

impl Texts {
    /// Compiles and checks the built-in set and `custom` (set -> language ->
    /// sources). Errors name the set, language and part.
    pub fn new(custom: &BTreeMap<String, BTreeMap<String, Sources>>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_auto_escape_callback(|name| {
            if name.ends_with("/html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        let mut languages = BTreeMap::new();
        let mut sets: Vec<(&str, Vec<(String, Sources)>)> = vec![(
            BUILT_IN,
            built_in()
                .into_iter()
                .map(|(language, sources)| (language.to_owned(), sources))
                .collect(),
        )];
        for (set, by_language) in custom {
            if set == BUILT_IN {
                bail!("[texts.{set}]: that name is the built-in set's");
            }
            let mut entries = Vec::new();
            for (language, sources) in by_language {
                let tag = otp_common::language::normalize(language).with_context(|| {
                    format!("[texts.{set}.{language}]: {language:?} is not a BCP 47 language tag")
                })?;
                entries.push((tag, sources.clone()));
            }
            if entries.is_empty() {
                bail!("[texts.{set}] has no language");
            }
            sets.push((set, entries));
        }
        for (set, entries) in sets {
            let mut tags = Vec::new();
            for (language, sources) in entries {
                for (part, source) in
                    PARTS
                        .into_iter()
                        .zip([&sources.subject, &sources.text, &sources.html])
                {
                    let name = format!("{set}/{language}/{part}");
                    if source.len() > MAX_SOURCE {
                        bail!("texts {set}, {language}, {part}: longer than 64 KiB");
                    }
                    env.add_template_owned(name.clone(), source.clone())
                        .with_context(|| format!("texts {set}, {language}, {part}"))?;
                    check(&env, &name, part != "subject")
                        .with_context(|| format!("texts {set}, {language}, {part}"))?;
                }
                tags.push(language);
            }
            languages.insert(set.to_owned(), tags);
        }
        let texts = Self { env, languages };
        // Rendered once now, with the longest values a message can bring,
        // so that what fails or takes too long fails here and not at send.
        let longest_name = "W".repeat(MAX_AGENT_NAME);
        let sample = Fill {
            code: "000000",
            minutes: 10,
            expires_at: "00:00",
            time_zone: "+0530",
            agent_name: &longest_name,
        };
        for (set, languages) in &texts.languages {
            for language in languages {
                texts.render(set, language, &sample).map_err(|err| {
                    let out_of_fuel = err
                        .downcast_ref::<minijinja::Error>()
                        .is_some_and(|e| e.kind() == minijinja::ErrorKind::OutOfFuel);
                    if out_of_fuel {
                        anyhow::anyhow!(
                            "texts {set}, {language}: the template does too much work (more than {FUEL} steps)"
                        )
                    } else {
                        err.context(format!("texts {set}, {language}"))
                    }
                })?;
            }
        }
        Ok(texts)
    }

    /// The languages of a set, or None when there is no such set.
    pub fn languages(&self, set: &str) -> Option<&[String]> {
        self.languages.get(set).map(Vec::as_slice)
    }

    /// Renders the set's texts in `language` (one of `languages(set)`).
    pub fn render(&self, set: &str, language: &str, fill: &Fill<'_>) -> Result<Rendered> {
        let values = minijinja::context! {
            code => fill.code,
            minutes => fill.minutes,
            expires_at => fill.expires_at,
            time_zone => fill.time_zone,
            agent_name => fill.agent_name,
        };
        let part = |part: &str| -> Result<String> {
            let name = format!("{set}/{language}/{part}");
            Ok(self.env.get_template(&name)?.render(&values)?)
        };
        Ok(Rendered {
            // a subject is one line, whatever the template's layout
            subject: part("subject")?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            text: part("text")?,
            html: part("html")?,
        })
    }
}

/// Refuses placeholders outside PLACEHOLDERS, and a body without the code.
fn check(env: &Environment<'_>, name: &str, needs_code: bool) -> Result<()> {
    let template = env.get_template(name)?;
    let used = template.undeclared_variables(false);
    let mut unknown: Vec<&String> = used
        .iter()
        .filter(|name| !PLACEHOLDERS.iter().any(|(known, _)| known == name))
        .collect();
    unknown.sort();
    if let Some(first) = unknown.first() {
        let known: Vec<&str> = PLACEHOLDERS.iter().map(|(name, _)| *name).collect();
        bail!(
            "unknown placeholder {{{{ {first} }}}} (known: {})",
            known.join(", ")
        );
    }
    if needs_code && !used.contains("code") {
        bail!("the body does not contain {{{{ code }}}}");
    }
    Ok(())
}

/// The built-in texts: short, say when the code expires, that it works
/// once, and what to do when you did not ask for it.
fn built_in() -> [(&'static str, Sources); 2] {
    let en = Sources {
        subject: "Your {% if agent_name %}{{ agent_name }} {% endif %}verification code".into(),
        text: "Your {% if agent_name %}{{ agent_name }} {% endif %}verification code is {{ code }}.\n\n\
               It expires in {{ minutes }} minute{% if minutes != 1 %}s{% endif %} \
               (at {{ expires_at }} {{ time_zone }}) and works only once.\n\n\
               If you did not ask for a code, ignore this message and do not share the code \
               with anyone: someone may be trying to use your details.\n"
            .into(),
        html: "<p>Your {% if agent_name %}{{ agent_name }} {% endif %}verification code is</p>\
               <p style=\"font-size:28px;font-weight:bold;letter-spacing:4px\">{{ code }}</p>\
               <p>It expires in {{ minutes }} minute{% if minutes != 1 %}s{% endif %} \
               (at {{ expires_at }} {{ time_zone }}) and works only once.</p>\
               <p>If you did not ask for a code, ignore this message and do not share the code \
               with anyone: someone may be trying to use your details.</p>"
            .into(),
    };
    let es = Sources {
        subject: "Tu código de verificación{% if agent_name %} de {{ agent_name }}{% endif %}".into(),
        text: "Tu código de verificación{% if agent_name %} de {{ agent_name }}{% endif %} es {{ code }}.\n\n\
               Caduca en {{ minutes }} minuto{% if minutes != 1 %}s{% endif %} \
               (a las {{ expires_at }} {{ time_zone }}) y solo sirve una vez.\n\n\
               Si no pediste un código, ignora este mensaje y no compartas el código \
               con nadie: alguien puede estar intentando usar tus datos.\n"
            .into(),
        html: "<p>Tu código de verificación{% if agent_name %} de {{ agent_name }}{% endif %} es</p>\
               <p style=\"font-size:28px;font-weight:bold;letter-spacing:4px\">{{ code }}</p>\
               <p>Caduca en {{ minutes }} minuto{% if minutes != 1 %}s{% endif %} \
               (a las {{ expires_at }} {{ time_zone }}) y solo sirve una vez.</p>\
               <p>Si no pediste un código, ignora este mensaje y no compartas el código \
               con nadie: alguien puede estar intentando usar tus datos.</p>"
            .into(),
    };
    [("en", en), ("es", es)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<'a>(agent_name: &'a str, minutes: u64) -> Fill<'a> {
        Fill {
            code: "042042",
            minutes,
            expires_at: "14:05",
            time_zone: "CST",
            agent_name,
        }
    }

    fn custom(text: &str, html: &str) -> BTreeMap<String, BTreeMap<String, Sources>> {
        let sources = Sources {
            subject: "Code".into(),
            text: text.into(),
            html: html.into(),
        };
        BTreeMap::from([(
            "acme".to_owned(),
            BTreeMap::from([("en".to_owned(), sources)]),
        )])
    }

    #[test]
    fn built_in_texts_in_english_and_spanish() {
        let texts = Texts::new(&BTreeMap::new()).unwrap();
        assert_eq!(texts.languages(BUILT_IN).unwrap(), ["en", "es"]);
        let en = texts.render(BUILT_IN, "en", &fill("Payroll", 5)).unwrap();
        assert_eq!(en.subject, "Your Payroll verification code");
        assert!(
            en.text
                .starts_with("Your Payroll verification code is 042042.\n"),
            "{}",
            en.text
        );
        assert!(en
            .text
            .contains("expires in 5 minutes (at 14:05 CST) and works only once"));
        let es = texts.render(BUILT_IN, "es", &fill("", 1)).unwrap();
        assert_eq!(es.subject, "Tu código de verificación");
        assert!(
            es.text
                .contains("Caduca en 1 minuto (a las 14:05 CST) y solo sirve una vez"),
            "{}",
            es.text
        );
        assert!(es.html.contains(">042042</p>"));
    }

    #[test]
    fn html_escapes_what_it_fills_in_and_text_does_not() {
        let texts = Texts::new(&BTreeMap::new()).unwrap();
        let name = r#"Smith & <Jones> "HR" 'B'"#;
        let rendered = texts.render(BUILT_IN, "en", &fill(name, 5)).unwrap();
        assert!(
            rendered
                .html
                .contains("Smith &amp; &lt;Jones&gt; &quot;HR&quot; &#x27;B&#x27;"),
            "{}",
            rendered.html
        );
        assert!(!rendered.html.contains("<Jones>"));
        assert!(rendered.text.contains(name));
        assert!(rendered.subject.contains(name));
    }

    #[test]
    fn a_template_that_runs_long_is_refused_at_load() {
        // Nested loops passed the load check and then held the runtime's
        // workers at render time (attack on issue 12, F2).
        let loops = "{% for a in code %}{% for b in code %}{% for c in code %}{% for d in code %}\
                     {% for e in code %}{% for f in code %}{% for g in code %}x\
                     {% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}";
        let started = std::time::Instant::now();
        let err = Texts::new(&custom(&format!("{{{{ code }}}}{loops}"), "{{ code }}"))
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("too much work"), "{err:#}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn refuses_unknown_placeholders_missing_codes_and_bad_syntax() {
        let err = |text: &str, html: &str| {
            format!("{:#}", Texts::new(&custom(text, html)).err().expect(text))
        };
        assert!(Texts::new(&custom("{{ code }}", "<b>{{ code }}</b>")).is_ok());
        let unknown = err("{{ code }} {{ coed }}", "{{ code }}");
        assert!(
            unknown.contains("texts acme, en, text")
                && unknown.contains("unknown placeholder {{ coed }}"),
            "{unknown}"
        );
        let missing = err("{{ code }}", "<p>no code here {{ minutes }}</p>");
        assert!(
            missing.contains("texts acme, en, html")
                && missing.contains("does not contain {{ code }}"),
            "{missing}"
        );
        let syntax = err("{{ code ", "{{ code }}");
        assert!(syntax.contains("texts acme, en, text"), "{syntax}");
        // attributes of a placeholder count as the placeholder's
        assert!(err("{{ code.x }} {{ secret.y }}", "{{ code }}").contains("{{ secret }}"));
        let mut bad_language = custom("{{ code }}", "{{ code }}");
        let english = bad_language["acme"]["en"].clone();
        bad_language
            .get_mut("acme")
            .unwrap()
            .insert("es_MX".into(), english);
        assert!(format!("{:#}", Texts::new(&bad_language).err().unwrap()).contains("not a BCP 47"));
    }
}
