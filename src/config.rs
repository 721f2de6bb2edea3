//! Validation of task, service, queue and default options.
//!
//! `define_task`, `set_queue`, `set_defaults` and `apply_config` (sql/config.sql) hand each
//! entry's options here as JSON. [`check`] returns either the normalized options, keyed by the
//! column names of the tables (durations as ISO 8601 text, which PostgreSQL's interval input
//! reads exactly), or every problem found, each naming the entry and the option. Nothing is
//! stored unless every entry is clean.

use crate::{cron, duration};
use pgrx::prelude::*;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Task,
    Service,
    Queue,
    Defaults,
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "task" => Some(Kind::Task),
            "service" => Some(Kind::Service),
            "queue" => Some(Kind::Queue),
            "defaults" => Some(Kind::Defaults),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Service => "service",
            Kind::Queue => "queue",
            Kind::Defaults => "defaults",
        }
    }

    /// Options this kind accepts, in the order the error message lists them (the registry's).
    fn accepts(self) -> Vec<&'static str> {
        OPTIONS.iter().filter(|o| o.kinds.contains(&self)).map(|o| o.name).collect()
    }
}

/// What kind of value an option takes; drives validation and what `conveyor.options` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// humantime or interval text; `positive`: 0s is refused
    Duration {
        positive: bool,
    },
    Integer {
        min: i64,
        max: i64,
    },
    Boolean,
    Choice(&'static [&'static str]),
    /// bytes, or text such as "64kB"
    Size,
    QueueName,
    /// a curve name or a list of delays (see `Checker::backoff`)
    Backoff,
    /// the list of a custom backoff
    Delays,
    Cron,
    TimeZone,
    Object,
    /// "N/period": at most N starts in any window of that duration ("100/1s", "5000/1h")
    Rate,
}

impl Takes {
    fn label(self) -> String {
        match self {
            Takes::Duration { positive: true } => "duration > 0".into(),
            Takes::Duration { positive: false } => "duration".into(),
            Takes::Integer { min, max } => format!("integer {min}..{max}"),
            Takes::Boolean => "boolean".into(),
            Takes::Choice(c) => c.join("|"),
            Takes::Size => "size".into(),
            Takes::QueueName => "queue name".into(),
            Takes::Backoff => "constant|linear|exponential|custom|list of durations".into(),
            Takes::Delays => "list of durations".into(),
            Takes::Cron => "cron expression".into(),
            Takes::TimeZone => "time zone".into(),
            Takes::Object => "JSON object".into(),
            Takes::Rate => "N/duration".into(),
        }
    }
}

/// One option of a task, service, queue or the defaults: defined here once. Validation, the
/// accepted-option lists, `conveyor.options` (and through it the tests that check the defaults
/// view and the README's option table) all come from this list.
pub struct OptionDef {
    pub name: &'static str,
    pub kinds: &'static [Kind],
    pub value: Takes,
    /// the built-in default, as a user would write it; None: unset means "none"
    pub default: Option<&'static str>,
    pub meaning: &'static str,
}

use Kind::{Defaults as D, Queue as Q, Service as S, Task as T};
const CURVES: &[&str] = &["constant", "linear", "exponential"];

pub static OPTIONS: &[OptionDef] = &[
    OptionDef { name: "queue", kinds: &[T, S, D], value: Takes::QueueName, default: Some("default"), meaning: "the queue its runs go to (created on first use)" },
    OptionDef { name: "priority", kinds: &[T, S, D], value: Takes::Integer { min: 0, max: 9 }, default: Some("0"), meaning: "0-9, lower first" },
    OptionDef { name: "enabled", kinds: &[T, S], value: Takes::Boolean, default: Some("true"), meaning: "a disabled task's runs fail with task_disabled when claimed" },
    OptionDef { name: "max_attempts", kinds: &[T, D], value: Takes::Integer { min: 1, max: 1000 }, default: Some("1"), meaning: "failed attempts allowed, the first included" },
    OptionDef { name: "retry_attempts", kinds: &[T, D], value: Takes::Integer { min: 0, max: 999 }, default: None, meaning: "retry_attempts = R means max_attempts = R + 1 (not both)" },
    OptionDef { name: "backoff", kinds: &[T, D], value: Takes::Backoff, default: Some("constant"), meaning: "constant, linear (delay x N), exponential (delay x 2^(N-1)), or a list of delays (custom; the last repeats)" },
    OptionDef { name: "delays", kinds: &[T, D], value: Takes::Delays, default: None, meaning: "the list of a custom backoff (backoff: custom)" },
    OptionDef { name: "delay", kinds: &[T, D], value: Takes::Duration { positive: false }, default: Some("5s"), meaning: "base delay of the backoff" },
    OptionDef { name: "max_delay", kinds: &[T, D], value: Takes::Duration { positive: false }, default: Some("5m"), meaning: "cap of the backoff (at least delay); a custom list is capped only by an explicit max_delay" },
    OptionDef { name: "jitter", kinds: &[T, D], value: Takes::Choice(&["none", "full", "equal"]), default: Some("none"), meaning: "full (0..d) or equal (d/2..d)" },
    OptionDef { name: "timeout", kinds: &[T, D], value: Takes::Duration { positive: true }, default: None, meaning: "per attempt; waiting never counts, a retry gets a fresh window" },
    OptionDef { name: "lease", kinds: &[T, S, D], value: Takes::Duration { positive: true }, default: Some("30s"), meaning: "lease taken at claim (a claim may ask for another)" },
    OptionDef { name: "max_lease", kinds: &[D], value: Takes::Duration { positive: true }, default: Some("1h"), meaning: "no claim or heartbeat extends a lease further" },
    OptionDef { name: "log_max_size", kinds: &[T, S, D], value: Takes::Size, default: Some("1MB"), meaning: "cap on an attempt's log" },
    OptionDef { name: "log_on_full", kinds: &[T, S, D], value: Takes::Choice(&["truncate", "kill_task"]), default: Some("truncate"), meaning: "kill_task ends the attempt with outcome log_overflow" },
    OptionDef { name: "retention", kinds: &[D], value: Takes::Duration { positive: false }, default: Some("7d"), meaning: "finished runs, with their attempts, logs and events, are pruned after it" },
    OptionDef { name: "schedule", kinds: &[T], value: Takes::Cron, default: None, meaning: "5-field cron; tick creates one run per firing" },
    OptionDef { name: "timezone", kinds: &[T], value: Takes::TimeZone, default: Some("UTC"), meaning: "the schedule's time zone" },
    OptionDef { name: "on_overlap", kinds: &[T], value: Takes::Choice(&["allow", "skip", "terminate"]), default: Some("allow"), meaning: "skip records a skipped run while one is in flight, terminate cancels it" },
    OptionDef { name: "catch_up", kinds: &[T], value: Takes::Boolean, default: Some("false"), meaning: "after downtime run every missed firing, not only the latest" },
    OptionDef { name: "parallelism", kinds: &[T], value: Takes::Integer { min: 1, max: 100_000 }, default: None, meaning: "at most N runs of the task delivered (queued or running) at once" },
    OptionDef { name: "replicas", kinds: &[S], value: Takes::Integer { min: 1, max: 1000 }, default: Some("1"), meaning: "runs of the service kept alive" },
    OptionDef { name: "restart_delay", kinds: &[S, D], value: Takes::Duration { positive: false }, default: Some("1s"), meaning: "base delay before a replica restarts" },
    OptionDef { name: "restart_backoff", kinds: &[S, D], value: Takes::Choice(CURVES), default: Some("exponential"), meaning: "curve over a replica's consecutive quick restarts (reset after 60s up)" },
    OptionDef { name: "restart_max_delay", kinds: &[S, D], value: Takes::Duration { positive: false }, default: Some("60s"), meaning: "cap of the restart backoff" },
    OptionDef { name: "payload", kinds: &[T, S], value: Takes::Object, default: Some("{}"), meaning: "payload of runs the queue creates itself (cron firings, service replicas)" },
    OptionDef { name: "concurrency", kinds: &[Q], value: Takes::Integer { min: 1, max: 1_000_000 }, default: None, meaning: "bounded queue: at most N runs queued or running at once" },
    OptionDef { name: "paused", kinds: &[Q], value: Takes::Boolean, default: Some("false"), meaning: "claims return nothing, tick delivers nothing into it" },
    OptionDef { name: "notify", kinds: &[Q], value: Takes::Boolean, default: Some("true"), meaning: "wakeups on conveyor.<queue> when runs become claimable" },
    OptionDef { name: "delivery_outbox", kinds: &[Q], value: Takes::Boolean, default: Some("false"), meaning: "an outbox row (topic conveyor.delivery) for every run that becomes claimable" },
    OptionDef { name: "rate_limit", kinds: &[T, Q], value: Takes::Rate, default: None, meaning: "at most N runs started in any window of the period (\"100/1s\", \"5000/1h\"), whatever the number of workers: a claim takes fewer runs (or none) and the rest stay queued; rate_limited_until(queues) says when to look again" },
    OptionDef { name: "key_concurrency", kinds: &[T, Q], value: Takes::Integer { min: 1, max: 100_000 }, default: None, meaning: "at most N running runs per concurrency key (enqueue's key): a queue's counts its runs with the key, a task's the task's runs with the key in any queue; a key at its limit is skipped, never blocking other keys" },
    OptionDef { name: "key_rate_limit", kinds: &[T, Q], value: Takes::Rate, default: None, meaning: "rate_limit per concurrency key: at most N runs with one key started in any window of the period (a queue's: from it, a task's: of it)" },
    OptionDef { name: "on_duplicate", kinds: &[T], value: Takes::Choice(&["return", "reject", "replace"]), default: Some("return"), meaning: "an enqueue whose idempotency key matches a live run of the task (or one finished within unique_for): return that run, reject (CV009), or replace its payload while it waits (latest wins)" },
    OptionDef { name: "unique_for", kinds: &[T], value: Takes::Duration { positive: true }, default: None, meaning: "an idempotency key keeps deduplicating for this long after its run finished" },
    OptionDef { name: "debounce", kinds: &[T], value: Takes::Duration { positive: true }, default: None, meaning: "a keyed run starts this long after the latest enqueue with its key: each one pushes a scheduled run's start back" },
    OptionDef { name: "debounce_max", kinds: &[T], value: Takes::Duration { positive: true }, default: None, meaning: "a debounced run starts at the latest this long after its first enqueue (at least debounce)" },
    OptionDef { name: "bind_session", kinds: &[T, S, Q, D], value: Takes::Boolean, default: Some("false"), meaning: "claims bind runs to the claiming session: tick ends them as crashed as soon as it is gone, not at lease expiry (wrong behind a transaction pooler; a claim's bind_session argument wins, then the task's, the claimed-from queue's, the defaults')" },
];

/// The registry for SQL (`conveyor.options`): [{name, kinds, type, default, meaning}, ...].
pub fn registry_json() -> Value {
    Value::Array(
        OPTIONS
            .iter()
            .map(|o| {
                json!({
                    "name": o.name,
                    "kinds": o.kinds.iter().map(|k| k.label()).collect::<Vec<_>>(),
                    "type": o.value.label(),
                    "default": o.default,
                    "meaning": o.meaning,
                })
            })
            .collect(),
    )
}

const RETRY_OPTIONS: &[&str] = &["max_attempts", "retry_attempts", "backoff", "delays", "delay", "max_delay", "jitter"];
const RESTART_OPTIONS: &[&str] = &["replicas", "restart_delay", "restart_backoff", "restart_max_delay"];

/// Names: tasks may use dots, colons, dashes and slashes (`emails.send`); queue names also
/// name a NOTIFY channel (`conveyor.<queue>`, at most 63 bytes), so they are shorter.
pub fn check_name(kind: Kind, name: &str) -> Result<(), String> {
    let (max, extra): (usize, &str) = match kind {
        Kind::Queue => (54, "_.:-"),
        _ => (128, "_.:-/"),
    };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {} name \"{name}\": use 1 to {max} letters, digits or {extra}, starting with a letter, digit or _",
            if kind == Kind::Queue { "queue" } else { "task" }
        ))
    }
}

struct Checker<'a> {
    kind: Kind,
    entry: &'a str,
    options: &'a Map<String, Value>,
    out: Map<String, Value>,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    fn problem(&mut self, option: &str, msg: impl std::fmt::Display) {
        let entry = match self.kind {
            Kind::Defaults => "defaults".to_string(),
            kind => format!("{} \"{}\"", kind.label(), self.entry),
        };
        self.problems.push(format!("{entry}: option \"{option}\": {msg}"));
    }

    fn get(&self, option: &str) -> Option<&'a Value> {
        self.options.get(option).filter(|v| !v.is_null())
    }

    fn duration(&mut self, option: &str, column: &str, positive: bool) -> Option<i64> {
        let value = self.get(option)?;
        let micros = match value {
            Value::String(s) => duration::parse(s).map_err(|e| e.to_string()),
            // a bare number is ambiguous (seconds? milliseconds?): ask for a unit
            other => Err(format!("expected a duration string such as \"30s\", got {other}")),
        };
        match micros {
            Ok(us) if positive && us == 0 => {
                self.problem(option, "must be greater than 0s");
                None
            }
            Ok(us) => {
                self.out.insert(column.into(), json!(duration::to_iso8601(us)));
                Some(us)
            }
            Err(e) => {
                self.problem(option, e);
                None
            }
        }
    }

    fn int(&mut self, option: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.get(option)?;
        match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => {
                self.out.insert(option.into(), json!(n));
                Some(n)
            }
            _ => {
                self.problem(option, format!("expected an integer from {min} to {max}, got {value}"));
                None
            }
        }
    }

    fn boolean(&mut self, option: &str) {
        if let Some(value) = self.get(option) {
            match value.as_bool() {
                Some(b) => {
                    self.out.insert(option.into(), json!(b));
                }
                None => self.problem(option, format!("expected true or false, got {value}")),
            }
        }
    }

    fn choice(&mut self, option: &str, accepted: &[&str]) -> Option<&'a str> {
        let value = self.get(option)?;
        match value.as_str() {
            Some(s) if accepted.contains(&s) => {
                self.out.insert(option.into(), json!(s));
                Some(s)
            }
            _ => {
                self.problem(option, format!("expected one of {}, got {value}", accepted.join(", ")));
                None
            }
        }
    }

    fn size(&mut self, option: &str) {
        let Some(value) = self.get(option) else { return };
        let bytes = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => parse_size(s),
            _ => None,
        };
        match bytes {
            Some(b) if (0..=1 << 30).contains(&b) => {
                self.out.insert(option.into(), json!(b));
            }
            _ => self.problem(
                option,
                format!("expected a size in bytes (e.g. 65536, \"64kB\", \"1MB\"; at most 1GB), got {value}"),
            ),
        }
    }

    fn queue(&mut self) {
        if let Some(value) = self.get("queue") {
            match value.as_str().map(|q| check_name(Kind::Queue, q).map(|_| q)) {
                Some(Ok(q)) => {
                    self.out.insert("queue".into(), json!(q));
                }
                Some(Err(e)) => self.problem("queue", e),
                None => self.problem("queue", format!("expected a queue name, got {value}")),
            }
        }
    }

    /// max_attempts / retry_attempts, backoff (+ delays), delay, max_delay, jitter.
    fn retry_policy(&mut self) {
        let max = self.int("max_attempts", 1, 1000);
        if let Some(r) = self.get("retry_attempts") {
            if max.is_some() || self.get("max_attempts").is_some() {
                self.problem(
                    "retry_attempts",
                    "give max_attempts or retry_attempts, not both (retry_attempts = R means max_attempts = R + 1)",
                );
            } else {
                match r.as_i64() {
                    Some(r) if (0..1000).contains(&r) => {
                        self.out.insert("max_attempts".into(), json!(r + 1));
                    }
                    _ => self.problem("retry_attempts", format!("expected an integer from 0 to 999, got {r}")),
                }
            }
        }
        self.backoff();
        let delay = self.duration("delay", "delay", false);
        let max_delay = self.duration("max_delay", "max_delay", false);
        if let (Some(d), Some(m)) = (delay, max_delay) {
            if m < d {
                self.problem(
                    "max_delay",
                    format!("must be at least delay ({} < {})", duration::format(m), duration::format(d)),
                );
            }
        }
        self.choice("jitter", &["none", "full", "equal"]);
    }

    /// `backoff` is a curve name, or a list of delays (an array, or text separated by commas),
    /// which means a custom curve; `backoff: "custom"` takes its list from `delays`.
    fn backoff(&mut self) {
        let backoff = self.get("backoff");
        let delays = self.get("delays");
        let list_value = match (backoff, delays) {
            (Some(Value::String(s)), None) if CURVES.contains(&s.as_str()) => {
                self.out.insert("backoff".into(), json!(s));
                return;
            }
            (Some(Value::String(s)), Some(list)) if s == "custom" => list,
            (Some(Value::String(s)), None) if s == "custom" => {
                self.problem("backoff", "custom backoff needs its list of delays, e.g. backoff: \"30s, 1m16s, 2m32s\"");
                return;
            }
            (Some(v @ Value::Array(_)), None) => v,
            (Some(Value::String(s)), None) if s.contains(',') || duration::parse(s).is_ok() => backoff.unwrap(),
            (None, Some(list)) => list,
            (None, None) => return,
            (Some(v), _) => {
                self.problem(
                    "backoff",
                    format!(
                        "expected constant, linear, exponential, or a list of delays such as \"30s, 1m16s\", got {v}"
                    ),
                );
                return;
            }
        };
        let items: Vec<Value> = match list_value {
            Value::Array(items) => items.clone(),
            Value::String(s) => s.split(',').map(|p| json!(p.trim())).collect(),
            other => {
                self.problem("delays", format!("expected a list of durations, got {other}"));
                return;
            }
        };
        let mut out = Vec::new();
        for item in &items {
            match item.as_str().map(duration::parse) {
                Some(Ok(us)) => out.push(json!(duration::to_iso8601(us))),
                Some(Err(e)) => self.problem("backoff", e),
                None => self.problem("backoff", format!("expected a duration string, got {item}")),
            }
        }
        if items.is_empty() {
            self.problem("backoff", "the list of delays is empty");
        }
        self.out.insert("backoff".into(), json!("custom"));
        self.out.insert("backoff_custom".into(), Value::Array(out));
    }

    fn schedule(&mut self) {
        let tz = match self.get("timezone") {
            Some(Value::String(tz)) => Some(tz.as_str()),
            Some(other) => {
                self.problem("timezone", format!("expected a time zone name such as \"Europe/Paris\", got {other}"));
                return;
            }
            None => None,
        };
        match self.get("schedule") {
            Some(Value::String(expr)) => match cron::parse(expr, tz) {
                // a schedule no date matches (0 0 30 2 *) would store a task with no next firing
                Ok(schedule) if schedule.next_after(chrono::Utc::now()).is_none() => {
                    self.problem("schedule", format!("\"{expr}\" never fires: no date matches it"));
                }
                Ok(_) => {
                    self.out.insert("schedule".into(), json!(expr));
                    if let Some(tz) = tz {
                        self.out.insert("timezone".into(), json!(tz));
                    }
                }
                Err(e) => self.problem("schedule", e),
            },
            Some(other) => {
                self.problem("schedule", format!("expected a cron expression such as \"*/5 * * * *\", got {other}"))
            }
            None => {
                if tz.is_some() {
                    self.problem("timezone", "a time zone needs a schedule");
                }
                for option in ["on_overlap", "catch_up"] {
                    if self.get(option).is_some() {
                        self.problem(option, "only applies to a task with a schedule");
                    }
                }
            }
        }
        self.choice("on_overlap", &["allow", "skip", "terminate"]);
        self.boolean("catch_up");
    }

    /// `rate_limit`: "N/period", stored as rate_limit_n and rate_limit_period.
    fn rate(&mut self, option: &str) {
        let Some(value) = self.get(option) else { return };
        let parsed = value.as_str().ok_or_else(|| format!("expected \"N/period\" such as \"100/1s\", got {value}"));
        match parsed.and_then(parse_rate) {
            Ok((n, micros)) => {
                self.out.insert(format!("{option}_n"), json!(n));
                self.out.insert(format!("{option}_period"), json!(duration::to_iso8601(micros)));
            }
            Err(e) => self.problem(option, e),
        }
    }

    /// debounce, and its cap debounce_max (at least debounce; only with debounce).
    fn debounce(&mut self) {
        let wait = self.duration("debounce", "debounce", true);
        let cap = self.duration("debounce_max", "debounce_max", true);
        match (wait, cap) {
            (Some(d), Some(m)) if m < d => self.problem(
                "debounce_max",
                format!("must be at least debounce ({} < {})", duration::format(m), duration::format(d)),
            ),
            (None, Some(_)) if self.get("debounce").is_none() => {
                self.problem("debounce_max", "only applies with debounce (the wait each enqueue restarts)")
            }
            _ => {}
        }
    }

    fn payload(&mut self) {
        if let Some(value) = self.get("payload") {
            if value.is_object() {
                self.out.insert("payload".into(), value.clone());
            } else {
                self.problem("payload", format!("expected a JSON object, got {value}"));
            }
        }
    }
}

/// "N/period" (spaces allowed): N from 1 to 1,000,000 starts, a period over 0s (at most 31 days:
/// the window's starts are kept that long).
pub fn parse_rate(text: &str) -> Result<(i64, i64), String> {
    let bad = |why: &str| format!("invalid rate \"{text}\": {why}");
    let (n, period) = text.split_once('/').ok_or_else(|| bad("expected N/period such as 100/1s or 5000/1h"))?;
    let n: i64 = n.trim().parse().map_err(|_| bad("N must be a whole number of runs"))?;
    if !(1..=1_000_000).contains(&n) {
        return Err(bad("N must be from 1 to 1000000"));
    }
    let micros = duration::parse(period.trim()).map_err(|e| bad(&e.to_string()))?;
    if micros == 0 {
        return Err(bad("the period must be longer than 0s"));
    }
    if micros > 31 * 86_400_000_000 {
        return Err(bad("the period must be at most 31 days"));
    }
    Ok((n, micros))
}

fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    let per = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" => 1024,
        "MB" | "M" => 1024 * 1024,
        "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Validate one entry; `Ok` holds the normalized options keyed by column name.
pub fn check(kind: Kind, name: &str, options: &Value) -> Result<Map<String, Value>, Vec<String>> {
    let empty = Map::new();
    let options = match options {
        Value::Object(map) => map,
        Value::Null => &empty,
        other => {
            return Err(vec![format!("{} \"{name}\": expected an object of options, got {other}", kind.label())]);
        }
    };
    let mut c = Checker { kind, entry: name, options, out: Map::new(), problems: Vec::new() };
    if kind != Kind::Defaults {
        let as_kind = if kind == Kind::Queue { Kind::Queue } else { Kind::Task };
        if let Err(e) = check_name(as_kind, name) {
            c.problems.push(e);
        }
    }
    let accepted = kind.accepts();
    for key in options.keys() {
        if accepted.contains(&key.as_str()) {
            continue;
        }
        let why = if kind == Kind::Service && RETRY_OPTIONS.contains(&key.as_str()) {
            "services restart instead of retrying: use restart_delay, restart_backoff, restart_max_delay".to_string()
        } else if kind == Kind::Task && RESTART_OPTIONS.contains(&key.as_str()) {
            "restart options are for services (define it with kind => 'service'); tasks retry with max_attempts, backoff, delay".to_string()
        } else {
            format!("unknown option; a {} accepts {}", kind.label(), accepted.join(", "))
        };
        c.problem(key, why);
    }
    // every option this kind accepts, validated by its type; groups of options that are checked
    // together (the retry policy, the schedule) at their first member
    for def in OPTIONS.iter().filter(|o| o.kinds.contains(&kind)) {
        match (def.name, def.value) {
            ("max_attempts", _) => c.retry_policy(),
            ("retry_attempts" | "backoff" | "delays" | "delay" | "max_delay" | "jitter", _) => {}
            ("schedule", _) => c.schedule(),
            ("timezone" | "on_overlap" | "catch_up", _) => {}
            ("debounce", _) => c.debounce(),
            ("debounce_max", _) => {}
            (name, Takes::Duration { positive }) => {
                c.duration(name, name, positive);
            }
            (name, Takes::Integer { min, max }) => {
                c.int(name, min, max);
            }
            (name, Takes::Boolean) => c.boolean(name),
            (name, Takes::Choice(accepted)) => {
                c.choice(name, accepted);
            }
            (name, Takes::Size) => c.size(name),
            (_, Takes::QueueName) => c.queue(),
            (_, Takes::Object) => c.payload(),
            (name, Takes::Rate) => c.rate(name),
            (name, other) => unreachable!("option {name} of type {other:?} has no validator"),
        }
    }
    if c.problems.is_empty() {
        Ok(c.out)
    } else {
        Err(c.problems)
    }
}

/// SQL: `{"options": {...normalized...}}` or `{"problems": ["...", ...]}`.
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _check_options(kind: &str, name: &str, options: Option<pgrx::JsonB>) -> pgrx::JsonB {
    let kind = Kind::from_name(kind).unwrap_or_else(|| panic!("unknown option kind {kind:?}"));
    let value = options.map(|j| j.0).unwrap_or(Value::Null);
    pgrx::JsonB(match check(kind, name, &value) {
        Ok(options) => json!({ "options": options }),
        Err(problems) => json!({ "problems": problems }),
    })
}

/// SQL: the option registry as JSON, for the view conveyor.options (new in 0.2.0).
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _option_registry() -> pgrx::JsonB {
    pgrx::JsonB(registry_json())
}

/// SQL: check a name alone (used by enqueue's queue override and set_queue).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _check_name(kind: &str, name: &str) -> Option<String> {
    let kind = Kind::from_name(kind).unwrap_or_else(|| panic!("unknown name kind {kind:?}"));
    check_name(kind, name).err()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn ok(kind: Kind, options: Value) -> Map<String, Value> {
        check(kind, "emails.send", &options).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn problems(kind: Kind, options: Value) -> Vec<String> {
        check(kind, "emails.send", &options).expect_err("should be refused")
    }

    #[test]
    fn a_full_task_normalizes() {
        let out = ok(
            Kind::Task,
            json!({"queue": "emails", "max_attempts": 5, "backoff": "exponential", "delay": "10s",
                   "max_delay": "5m", "jitter": "full", "timeout": "1m30s", "priority": 3,
                   "schedule": "*/5 * * * *", "timezone": "Europe/Paris", "on_overlap": "skip"}),
        );
        assert_eq!(out["delay"], json!("PT10S"));
        assert_eq!(out["max_delay"], json!("PT300S"));
        assert_eq!(out["timeout"], json!("PT90S"));
        assert_eq!(out["backoff"], json!("exponential"));
        assert_eq!(out["on_overlap"], json!("skip"));
    }

    #[test]
    fn retry_attempts_is_an_alias_and_both_are_refused() {
        assert_eq!(ok(Kind::Task, json!({"retry_attempts": 3}))["max_attempts"], json!(4));
        let p = problems(Kind::Task, json!({"retry_attempts": 3, "max_attempts": 4}));
        assert!(p[0].contains("not both"), "{p:?}");
    }

    #[test]
    fn custom_backoff_from_a_list_or_text() {
        let from_text = ok(Kind::Task, json!({"backoff": "30s, 1m16s, 2m32s, 5m8s"}));
        assert_eq!(from_text["backoff"], json!("custom"));
        assert_eq!(from_text["backoff_custom"], json!(["PT30S", "PT76S", "PT152S", "PT308S"]));
        let from_list = ok(Kind::Task, json!({"backoff": ["30s", "1m16s"]}));
        assert_eq!(from_list["backoff_custom"], json!(["PT30S", "PT76S"]));
        let named = ok(Kind::Task, json!({"backoff": "custom", "delays": ["1s"]}));
        assert_eq!(named["backoff_custom"], json!(["PT1S"]));
        assert!(problems(Kind::Task, json!({"backoff": "custom"}))[0].contains("needs its list"));
        assert!(problems(Kind::Task, json!({"backoff": "fibonacci"}))[0].contains("expected constant"));
        assert!(problems(Kind::Task, json!({"backoff": "30s, soon"}))[0].contains("\"soon\""));
    }

    #[test]
    fn max_delay_below_delay_is_refused() {
        let p = problems(Kind::Task, json!({"delay": "10m", "max_delay": "5m"}));
        assert_eq!(p, vec!["task \"emails.send\": option \"max_delay\": must be at least delay (5m < 10m)"]);
    }

    #[test]
    fn every_problem_is_listed_with_entry_and_option() {
        let p = problems(
            Kind::Task,
            json!({"delay": "5 minits", "jitter": "some", "priority": 12, "max_attemps": 3, "schedule": "* * *"}),
        );
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|m| m.contains("option \"delay\": invalid duration \"5 minits\"")));
        assert!(p.iter().any(|m| m.contains("option \"max_attemps\": unknown option")));
        assert!(p.iter().any(|m| m.contains("option \"priority\": expected an integer from 0 to 9, got 12")));
        assert!(p.iter().any(|m| m.contains("option \"schedule\": invalid schedule")));
        assert!(p.iter().all(|m| m.starts_with("task \"emails.send\"")));
    }

    #[test]
    fn services_refuse_retry_options_and_tasks_refuse_restart_options() {
        let p = problems(Kind::Service, json!({"max_attempts": 3, "replicas": 2}));
        assert!(p[0].contains("services restart instead of retrying"), "{p:?}");
        let p = problems(Kind::Task, json!({"restart_delay": "1s"}));
        assert!(p[0].contains("restart options are for services"), "{p:?}");
        assert_eq!(ok(Kind::Service, json!({"replicas": 2, "restart_delay": "2s"}))["replicas"], json!(2));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(Kind::Task, "emails.send").is_ok());
        assert!(check_name(Kind::Task, "x'; drop table conveyor.runs; --").is_err());
        assert!(check_name(Kind::Queue, "").is_err());
        assert!(check_name(Kind::Queue, &"q".repeat(55)).is_err());
        assert!(check(Kind::Task, "bad name", &json!({})).is_err());
    }

    #[test]
    fn rates_are_n_per_period() {
        assert_eq!(parse_rate("100/1s"), Ok((100, 1_000_000)));
        assert_eq!(parse_rate(" 5000 / 1h "), Ok((5000, 3_600_000_000)));
        for bad in ["100", "0/1s", "-1/1s", "1.5/1s", "100/0s", "100/soon", "100/40d", "1000001/1s", "/1s"] {
            assert!(parse_rate(bad).is_err(), "{bad} was accepted");
        }
        let k = ok(Kind::Task, json!({"key_rate_limit": "2/1s", "key_concurrency": 3}));
        assert_eq!((k["key_rate_limit_n"].clone(), k["key_concurrency"].clone()), (json!(2), json!(3)));
        assert!(problems(Kind::Queue, json!({"key_concurrency": 0}))[0].contains("key_concurrency"));
        let q = ok(Kind::Queue, json!({"rate_limit": "10/1m"}));
        assert_eq!((q["rate_limit_n"].clone(), q["rate_limit_period"].clone()), (json!(10), json!("PT60S")));
        assert!(problems(Kind::Task, json!({"rate_limit": 10}))[0].contains("expected \"N/period\""));
    }

    #[test]
    fn queues_and_defaults() {
        assert_eq!(ok(Kind::Queue, json!({"concurrency": 5, "paused": false}))["concurrency"], json!(5));
        assert!(problems(Kind::Queue, json!({"concurrency": 0}))[0].contains("from 1"));
        let d = check(Kind::Defaults, "", &json!({"retention": "3d", "lease": "1m", "log_max_size": "64kB"})).unwrap();
        assert_eq!(d["retention"], json!("PT259200S"));
        assert_eq!(d["log_max_size"], json!(65536));
    }

    /// A default as JSON, the way a user would give it in options.
    fn default_value(def: &OptionDef) -> Option<Value> {
        let text = def.default?;
        Some(match def.value {
            Takes::Integer { .. } => json!(text.parse::<i64>().unwrap()),
            Takes::Boolean => json!(text.parse::<bool>().unwrap()),
            Takes::Object => serde_json::from_str(text).unwrap(),
            _ => json!(text),
        })
    }

    #[test]
    fn every_built_in_default_passes_its_own_validation() {
        for def in OPTIONS {
            let Some(value) = default_value(def) else { continue };
            for &kind in def.kinds {
                // the schedule's companions need a schedule to go with them
                let mut options = json!({ def.name: value });
                if ["timezone", "on_overlap", "catch_up"].contains(&def.name) {
                    options["schedule"] = json!("* * * * *");
                }
                check(kind, "emails.send", &options).unwrap_or_else(|p| panic!("{}: {p:?}", def.name));
            }
        }
    }

    #[test]
    fn accepted_options_come_from_the_registry() {
        assert_eq!(
            Kind::Queue.accepts(),
            vec![
                "concurrency",
                "paused",
                "notify",
                "delivery_outbox",
                "rate_limit",
                "key_concurrency",
                "key_rate_limit",
                "bind_session"
            ]
        );
        assert!(Kind::Service.accepts().contains(&"replicas"));
        assert!(!Kind::Task.accepts().contains(&"replicas"));
        let names: Vec<_> = OPTIONS.iter().map(|o| o.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "an option is defined twice");
        let p = problems(Kind::Queue, json!({"bogus": 1}));
        assert!(
            p[0].ends_with(
                "a queue accepts concurrency, paused, notify, delivery_outbox, rate_limit, key_concurrency, key_rate_limit, bind_session"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        let p = problems(Kind::Task, json!({"schedule": "0 0 30 2 *"}));
        assert!(p[0].contains("never fires"), "{p:?}");
        assert!(check(Kind::Task, "emails.send", &json!({"schedule": "0 0 29 2 *"})).is_ok(), "leap days do come");
    }

    #[test]
    fn timeouts_must_be_positive_and_bare_numbers_need_a_unit() {
        assert!(problems(Kind::Task, json!({"timeout": "0s"}))[0].contains("greater than 0s"));
        assert!(problems(Kind::Task, json!({"delay": 30}))[0].contains("duration string"));
    }
}
