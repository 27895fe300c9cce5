//! Small integer keys of the compact tables: the agents, checks and regions a batch names and
//! the texts it carries (reasons, probe values as JSON), taken from a [`KeyCache`] of keys
//! already committed or looked up and made inside the batch's own transaction (so a key
//! exists exactly when a row that uses it is committed).
//!
//! Agent, check and region keys are never deleted: a key is a few bytes per name ever seen.
//! Texts are target-controlled and many, so each carries `last_seen_ms` (the newest
//! measurement or arrival of a row that used it, refreshed at most once an hour) and retention
//! deletes the texts that no kept row can use ([`expire_texts`]).
//!
//! A text goes into `texts` only once it repeats: twice in a batch, or seen before in a
//! recent batch (a bounded set of hashes, [`SEEN_ONCE_CAP`]). A text seen once stays inline
//! in its row, so texts that change with every result (ICMP round-trip times, SMTP phase
//! times, chain heights) never cost a dictionary row and its indexes.
//!
//! A [`KeyCache`] remembers the keys batches committed, so a batch whose names and texts are
//! all known (a fleet's usual batch) resolves them without a statement.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::StoreError;
use super::models::IngestBatch;

/// How stale `last_seen_ms` may be before a batch that uses the text refreshes it.
pub const TEXT_REFRESH_MS: i64 = 3_600_000;
/// How much longer than the raw rows a text is kept: more than the refresh plus the day
/// PostgreSQL keeps past the cut (it drops whole day partitions), so no kept row loses its
/// text and a text a batch has just looked up is never the one retention deletes.
pub const TEXT_GRACE_MS: i64 = 2 * 86_400_000;
/// Texts deleted per statement.
const EXPIRE_BATCH: i64 = 5000;
/// Names per statement on SQLite.
const SQLITE_CHUNK: usize = 500;
/// Hashes of texts seen once that are remembered; the set starts again when full.
pub const SEEN_ONCE_CAP: usize = 16_384;

/// Hashes of texts seen once lately (see the module's documentation).
static SEEN_ONCE: std::sync::Mutex<Option<std::collections::HashSet<u64>>> =
    std::sync::Mutex::new(None);

fn text_hash(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(text)
}

/// Keeps the texts of `counts` (text → uses in this batch) that repeat: used twice here or
/// seen in an earlier batch; notes the others as seen once.
fn repeated(counts: BTreeMap<&str, (usize, i64)>) -> BTreeMap<&str, i64> {
    let mut guard = SEEN_ONCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = guard.get_or_insert_with(Default::default);
    let mut out = BTreeMap::new();
    for (text, (uses, last_seen)) in counts {
        let hash = text_hash(text);
        if uses >= 2 || seen.contains(&hash) {
            out.insert(text, last_seen);
        } else {
            if seen.len() >= SEEN_ONCE_CAP {
                seen.clear();
            }
            seen.insert(hash);
        }
    }
    out
}

/// The dictionaries of the compact tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTable {
    Agents,
    Checks,
    Regions,
}

impl KeyTable {
    fn table(self) -> &'static str {
        match self {
            KeyTable::Agents => "agent_keys",
            KeyTable::Checks => "check_keys",
            KeyTable::Regions => "region_keys",
        }
    }
}

/// Entries a [`KeyCache`] map holds at most; a full map starts again.
pub const KEY_CACHE_CAP: usize = 65_536;
/// Bytes of text a [`KeyCache`] holds at most (a probe-values text may be kilobytes); a full
/// text map starts again.
pub const KEY_CACHE_TEXT_BYTES: usize = 8 << 20;

/// Keys of names and texts as committed batches stored them, shared by the committers of one
/// process: what a batch finds here it does not look up.
///
/// - An agent, check or region keeps its key for ever (keys are never deleted), so a known
///   one is always right.
/// - A text is used from here only when the `last_seen_ms` committed with it is within
///   [`TEXT_REFRESH_MS`] of both the batch's use (the store's own refresh rule: the stored
///   value is at least the committed one, so the batch would neither refresh the text nor
///   make it) and the clock. Retention deletes only texts last seen before the raw rows'
///   cutoff less [`TEXT_GRACE_MS`], days before the clock.
///
/// Only keys of committed transactions come here ([`KeyCache::learn`] after the commit): a
/// key made by a transaction that rolled back does not exist. A store that goes back in time
/// (a restore, a failover to a standby that lost commits) may give a remembered key out
/// again: ingest forgets everything when a commit fails ([`KeyCache::clear`]), and a restore
/// is made with the control planes stopped (README).
#[derive(Debug, Default)]
pub struct KeyCache(std::sync::Mutex<Cached>);

#[derive(Debug, Default)]
struct Cached {
    agents: HashMap<String, i64>,
    checks: HashMap<String, i64>,
    regions: HashMap<String, i64>,
    /// Text → (key, `last_seen_ms` as committed).
    texts: HashMap<String, (i64, i64)>,
    /// Bytes of the texts in `texts`.
    text_bytes: usize,
}

/// Keys a batch read from the store, for [`KeyCache::learn`] once it is committed.
#[derive(Debug, Default)]
pub struct Learned {
    names: Vec<(KeyTable, String, i64)>,
    /// (text, key, `last_seen_ms`).
    texts: Vec<(String, i64, i64)>,
}

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers what a committed batch read from the store.
    pub fn learn(&self, learned: Learned) {
        /// Inserts into a map of at most [`KEY_CACHE_CAP`] entries; whether it started again.
        fn bounded<V>(map: &mut HashMap<String, V>, name: String, value: V) -> bool {
            let full = map.len() >= KEY_CACHE_CAP && !map.contains_key(&name);
            if full {
                map.clear();
            }
            map.insert(name, value);
            full
        }
        let mut cached = self.lock();
        for (table, name, key) in learned.names {
            let map = match table {
                KeyTable::Agents => &mut cached.agents,
                KeyTable::Checks => &mut cached.checks,
                KeyTable::Regions => &mut cached.regions,
            };
            bounded(map, name, key);
        }
        for (text, key, last_seen) in learned.texts {
            let len = text.len();
            let new = !cached.texts.contains_key(&text);
            if new && cached.text_bytes + len > KEY_CACHE_TEXT_BYTES {
                cached.texts.clear();
                cached.text_bytes = 0;
            }
            if bounded(&mut cached.texts, text, (key, last_seen)) {
                cached.text_bytes = 0;
            }
            if new {
                cached.text_bytes += len;
            }
        }
    }

    /// Forgets every key (after a failed commit: the store may not be where it was).
    pub fn clear(&self) {
        *self.lock() = Cached::default();
    }

    /// Entries held, per map (agents, checks, regions, texts), and the texts' bytes.
    pub fn sizes(&self) -> [usize; 5] {
        let cached = self.lock();
        [
            cached.agents.len(),
            cached.checks.len(),
            cached.regions.len(),
            cached.texts.len(),
            cached.text_bytes,
        ]
    }

    /// Splits a batch's names and texts into those known here (their keys put in `keys`) and
    /// those to read from the store.
    fn split<'a>(&self, names: Names<'a>, keys: &mut BatchKeys) -> Names<'a> {
        let (agents, checks, regions, texts) = names;
        let cached = self.lock();
        let known = |cache: &HashMap<String, i64>,
                     names: BTreeSet<&'a str>,
                     into: &mut HashMap<String, i64>| {
            names
                .into_iter()
                .filter(|name| match cache.get(*name) {
                    Some(key) => {
                        into.insert((*name).to_owned(), *key);
                        false
                    }
                    None => true,
                })
                .collect::<BTreeSet<&'a str>>()
        };
        let recent = super::now_ms() - TEXT_REFRESH_MS;
        let agents = known(&cached.agents, agents, &mut keys.agents);
        let checks = known(&cached.checks, checks, &mut keys.checks);
        let regions = known(&cached.regions, regions, &mut keys.regions);
        let texts = texts
            .into_iter()
            .filter(|(text, seen)| match cached.texts.get(*text) {
                Some((key, stored)) if *stored >= seen - TEXT_REFRESH_MS && *stored >= recent => {
                    keys.texts.insert((*text).to_owned(), *key);
                    false
                }
                _ => true,
            })
            .collect();
        (agents, checks, regions, texts)
    }
}

/// The keys of every name and text in one batch.
#[derive(Debug, Default)]
pub struct BatchKeys {
    agents: HashMap<String, i64>,
    checks: HashMap<String, i64>,
    regions: HashMap<String, i64>,
    texts: HashMap<String, i64>,
    /// Agent keys back to ids, for what `RETURNING` names.
    agent_ids: HashMap<i64, String>,
    /// What was read from the store rather than a [`KeyCache`].
    pub learned: Learned,
}

fn missing(what: &'static str, name: &str) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: format!("no key for {name:?} after it was made"),
    }
}

/// What a batch names: (agents, checks, regions, the texts that go into `texts` with the
/// newest time of a row that uses each).
type Names<'a> = (
    BTreeSet<&'a str>,
    BTreeSet<&'a str>,
    BTreeSet<&'a str>,
    BTreeMap<&'a str, i64>,
);

/// `values`: each result's probe values as JSON, when it has any.
fn names<'a>(batch: &'a IngestBatch, values: &'a [Option<String>]) -> Names<'a> {
    let mut agents = BTreeSet::new();
    let mut checks = BTreeSet::new();
    let mut regions = BTreeSet::new();
    let mut texts: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
    for ((agent, region, r), values) in batch.results.iter().zip(values) {
        agents.insert(agent.as_str());
        regions.insert(region.as_str());
        checks.insert(r.check_id.as_str());
        let seen = r.measured_at_ms.max(batch.received_at_ms);
        for text in std::iter::once(r.reason.as_str()).chain(values.as_deref()) {
            let slot = texts.entry(text).or_insert((0, seen));
            slot.0 += 1;
            slot.1 = slot.1.max(seen);
        }
    }
    for (agent, region, _) in &batch.metrics {
        agents.insert(agent.as_str());
        regions.insert(region.as_str());
    }
    (agents, checks, regions, repeated(texts))
}

impl BatchKeys {
    pub fn agent(&self, id: &str) -> Result<i64, StoreError> {
        self.agents
            .get(id)
            .copied()
            .ok_or_else(|| missing("agent key", id))
    }

    pub fn check(&self, id: &str) -> Result<i64, StoreError> {
        self.checks
            .get(id)
            .copied()
            .ok_or_else(|| missing("check key", id))
    }

    pub fn region(&self, id: &str) -> Result<i64, StoreError> {
        self.regions
            .get(id)
            .copied()
            .ok_or_else(|| missing("region key", id))
    }

    /// The key of a text that goes into `texts`; `None` for one kept inline in its row.
    pub fn text(&self, text: &str) -> Option<i64> {
        self.texts.get(text).copied()
    }

    /// The agent id of a key this batch resolved.
    pub fn agent_id(&self, key: i64) -> Option<&str> {
        self.agent_ids.get(&key).map(String::as_str)
    }

    /// Takes keys read from the store for `table`.
    fn read(&mut self, table: KeyTable, found: HashMap<String, i64>) {
        let into = match table {
            KeyTable::Agents => &mut self.agents,
            KeyTable::Checks => &mut self.checks,
            KeyTable::Regions => &mut self.regions,
        };
        for (name, key) in found {
            self.learned.names.push((table, name.clone(), key));
            into.insert(name, key);
        }
    }

    /// Takes text keys read from the store: (text, key, `last_seen_ms`).
    fn read_texts(&mut self, found: Vec<(String, i64, i64)>) {
        for (text, key, last_seen) in found {
            self.texts.insert(text.clone(), key);
            self.learned.texts.push((text, key, last_seen));
        }
    }

    fn finish(mut self) -> Self {
        self.agent_ids = self.agents.iter().map(|(k, v)| (*v, k.clone())).collect();
        self
    }

    /// Looks up or makes the keys of everything `batch` names and of `values`, its results'
    /// probe values as JSON (PostgreSQL).
    pub async fn resolve_postgres(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        batch: &IngestBatch,
        values: &[Option<String>],
        cache: &KeyCache,
    ) -> Result<Self, StoreError> {
        let mut keys = BatchKeys::default();
        let (agents, checks, regions, texts) = cache.split(names(batch, values), &mut keys);
        for (table, names) in [
            (KeyTable::Agents, &agents),
            (KeyTable::Checks, &checks),
            (KeyTable::Regions, &regions),
        ] {
            let found = names_postgres(tx, table, names).await?;
            keys.read(table, found);
        }
        if !texts.is_empty() {
            let seen: Vec<i64> = texts.values().copied().collect();
            let texts: Vec<&str> = texts.keys().copied().collect();
            // Refresh first: a text retention is deleting right now is either kept (the delete
            // re-checks the refreshed row) or gone before the insert below makes it again. The
            // rows to refresh are locked in text order first, as every other lock of a commit
            // is taken in order: the UPDATE's join would lock them in whatever order its plan
            // gives, and two committers refreshing the same texts could deadlock.
            sqlx::query(
                "SELECT x.text FROM texts x JOIN UNNEST($1::text[], $2::bigint[]) AS u(t, s) \
                 ON x.text = u.t WHERE x.last_seen_ms < u.s - $3 ORDER BY x.text FOR NO KEY UPDATE OF x",
            )
            .bind(&texts)
            .bind(&seen)
            .bind(TEXT_REFRESH_MS)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE texts SET last_seen_ms = u.s FROM UNNEST($1::text[], $2::bigint[]) AS u(t, s) \
                 WHERE texts.text = u.t AND texts.last_seen_ms < u.s - $3",
            )
            .bind(&texts)
            .bind(&seen)
            .bind(TEXT_REFRESH_MS)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "INSERT INTO texts (text, last_seen_ms) SELECT u.t, u.s FROM UNNEST($1::text[], $2::bigint[]) \
                 AS u(t, s) WHERE NOT EXISTS (SELECT 1 FROM texts x WHERE x.text = u.t) ORDER BY u.t \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&texts)
            .bind(&seen)
            .execute(&mut **tx)
            .await?;
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT text, key::bigint, last_seen_ms FROM texts WHERE text = ANY($1)",
            )
            .bind(&texts)
            .fetch_all(&mut **tx)
            .await?;
            keys.read_texts(rows);
        }
        Ok(keys.finish())
    }

    /// [`Self::resolve_postgres`] for SQLite.
    pub async fn resolve_sqlite(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        batch: &IngestBatch,
        values: &[Option<String>],
        cache: &KeyCache,
    ) -> Result<Self, StoreError> {
        let mut keys = BatchKeys::default();
        let (agents, checks, regions, texts) = cache.split(names(batch, values), &mut keys);
        for (table, names) in [
            (KeyTable::Agents, &agents),
            (KeyTable::Checks, &checks),
            (KeyTable::Regions, &regions),
        ] {
            let found = names_sqlite(tx, table, names).await?;
            keys.read(table, found);
        }
        let all: Vec<(&str, i64)> = texts.into_iter().collect();
        for chunk in all.chunks(SQLITE_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO texts (text, last_seen_ms) ");
            insert.push_values(chunk, |mut row, (text, seen)| {
                row.push_bind(*text).push_bind(*seen);
            });
            insert.push(
                " ON CONFLICT (text) DO UPDATE SET last_seen_ms = excluded.last_seen_ms \
                 WHERE texts.last_seen_ms < excluded.last_seen_ms - ",
            );
            insert.push_bind(TEXT_REFRESH_MS);
            insert.build().execute(&mut **tx).await?;
            let mut select = QueryBuilder::<Sqlite>::new(
                "SELECT text, key, last_seen_ms FROM texts WHERE text IN (",
            );
            let mut list = select.separated(", ");
            for (text, _) in chunk {
                list.push_bind(*text);
            }
            select.push(")");
            let rows: Vec<(String, i64, i64)> =
                select.build_query_as().fetch_all(&mut **tx).await?;
            keys.read_texts(rows);
        }
        Ok(keys.finish())
    }
}

async fn names_postgres(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: KeyTable,
    names: &BTreeSet<&str>,
) -> Result<HashMap<String, i64>, StoreError> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let table = table.table();
    let names: Vec<&str> = names.iter().copied().collect();
    // NOT EXISTS first: an insert that conflicts would still take a value of the sequence.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id) SELECT x FROM UNNEST($1::text[]) AS x WHERE NOT EXISTS \
         (SELECT 1 FROM {table} k WHERE k.id = x) ORDER BY x ON CONFLICT DO NOTHING"
    )))
    .bind(&names)
    .execute(&mut **tx)
    .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, key::bigint FROM {table} WHERE id = ANY($1)"
    )))
    .bind(&names)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn names_sqlite(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    table: KeyTable,
    names: &BTreeSet<&str>,
) -> Result<HashMap<String, i64>, StoreError> {
    let table = table.table();
    let names: Vec<&str> = names.iter().copied().collect();
    let mut out = HashMap::with_capacity(names.len());
    for chunk in names.chunks(SQLITE_CHUNK) {
        let mut insert =
            QueryBuilder::<Sqlite>::new(format!("INSERT OR IGNORE INTO {table} (id) "));
        insert.push_values(chunk, |mut row, name| {
            row.push_bind(*name);
        });
        insert.build().execute(&mut **tx).await?;
        let mut select =
            QueryBuilder::<Sqlite>::new(format!("SELECT id, key FROM {table} WHERE id IN ("));
        let mut list = select.separated(", ");
        for name in chunk {
            list.push_bind(*name);
        }
        select.push(")");
        let rows: Vec<(String, i64)> = select.build_query_as().fetch_all(&mut **tx).await?;
        out.extend(rows);
    }
    Ok(out)
}

/// Deletes the texts no kept raw row can use: last seen before the raw rows' cutoff less
/// [`TEXT_GRACE_MS`], a batch per statement through `texts_last_seen`. Returns how many it
/// deleted.
pub(super) async fn expire_texts(
    store: &super::Store,
    raw_before_ms: i64,
) -> Result<u64, StoreError> {
    let sql = "DELETE FROM texts WHERE key IN \
               (SELECT key FROM texts WHERE last_seen_ms < $1 LIMIT $2)";
    let before = raw_before_ms - TEXT_GRACE_MS;
    let mut total = 0;
    loop {
        let deleted = super::on_pool!(store, pool => sqlx::query(sql)
            .bind(before)
            .bind(EXPIRE_BATCH)
            .execute(pool)
            .await?
            .rows_affected());
        total += deleted;
        if deleted < EXPIRE_BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known names and fresh texts come from the cache; new names, texts it has not seen and
    /// texts whose committed `last_seen_ms` is stale (for the batch's use, or for the clock)
    /// are read from the store. Only learned keys are known, and the maps stay bounded.
    #[test]
    fn the_key_cache_answers_only_what_it_knows_fresh() {
        let now = crate::store::now_ms();
        let cache = KeyCache::default();
        cache.learn(Learned {
            names: vec![
                (KeyTable::Agents, "ag-1".into(), 1),
                (KeyTable::Checks, "web".into(), 7),
                (KeyTable::Regions, "eu".into(), 3),
            ],
            texts: vec![
                ("status 200".into(), 11, now),
                ("status 503".into(), 12, now - 2 * TEXT_REFRESH_MS),
                ("timeout".into(), 13, now - 10),
            ],
        });
        let names: Names<'_> = (
            BTreeSet::from(["ag-1", "ag-2"]),
            BTreeSet::from(["web"]),
            BTreeSet::from(["eu", "us"]),
            BTreeMap::from([
                ("status 200", now),
                ("status 503", now),
                // Used by a row from the future (a clock ahead): stale for it.
                ("timeout", now + 2 * TEXT_REFRESH_MS),
                ("refused", now),
            ]),
        );
        let mut keys = BatchKeys::default();
        let (agents, checks, regions, texts) = cache.split(names, &mut keys);
        assert_eq!(agents, BTreeSet::from(["ag-2"]));
        assert!(checks.is_empty());
        assert_eq!(regions, BTreeSet::from(["us"]));
        assert_eq!(
            texts.keys().copied().collect::<Vec<_>>(),
            ["refused", "status 503", "timeout"]
        );
        assert_eq!(keys.agent("ag-1").ok(), Some(1));
        assert_eq!(keys.check("web").ok(), Some(7));
        assert_eq!(keys.region("eu").ok(), Some(3));
        assert_eq!(keys.text("status 200"), Some(11));
        assert!(keys.agent("ag-2").is_err());
        assert_eq!(keys.text("status 503"), None);
        // What a batch read from the store is what it learns, and nothing else.
        keys.read(KeyTable::Agents, HashMap::from([("ag-2".to_owned(), 2)]));
        keys.read_texts(vec![("refused".into(), 14, now)]);
        assert_eq!(keys.learned.names.len(), 1);
        assert_eq!(keys.learned.texts.len(), 1);
        // Each map stays within its bound: a full one starts again.
        cache.learn(Learned {
            names: (0..=KEY_CACHE_CAP as i64)
                .map(|i| (KeyTable::Checks, format!("ck-{i}"), i))
                .collect(),
            texts: Vec::new(),
        });
        assert!(cache.sizes()[1] <= KEY_CACHE_CAP);
        assert_eq!(cache.sizes()[0], 1);
        // Texts stay within their bytes too: 3 KiB texts beyond the bound start the map again.
        let before = cache.sizes();
        assert_eq!(before[3], 3);
        assert_eq!(
            before[4],
            "status 200".len() + "status 503".len() + "timeout".len()
        );
        let n = KEY_CACHE_TEXT_BYTES / 3072 + 10;
        cache.learn(Learned {
            names: Vec::new(),
            texts: (0..n as i64)
                .map(|i| (format!("{i:03072}"), i, now))
                .collect(),
        });
        let [_, _, _, texts, bytes] = cache.sizes();
        assert!(bytes <= KEY_CACHE_TEXT_BYTES);
        assert_eq!(bytes, texts * 3072);
        assert!(texts < n);
        // A failed commit forgets everything.
        cache.clear();
        assert_eq!(cache.sizes(), [0; 5]);
    }

    #[test]
    fn a_text_goes_into_the_dictionary_once_it_repeats() {
        let unique = format!("rtt avg {} ms", std::process::id());
        let once = || BTreeMap::from([(unique.as_str(), (1, 20))]);
        // Used twice in one batch: at once. Used once: inline, then from its next use on.
        assert_eq!(
            repeated(BTreeMap::from([("status 200", (2, 10))])).get("status 200"),
            Some(&10)
        );
        assert!(!repeated(once()).contains_key(unique.as_str()));
        assert_eq!(repeated(once()).get(unique.as_str()), Some(&20));
        // The set of texts seen once stays bounded: filling it forgets what it held.
        for i in 0..SEEN_ONCE_CAP {
            repeated(BTreeMap::from([(format!("x{i}").as_str(), (1, 0))]));
        }
        let seen = SEEN_ONCE.lock().unwrap().as_ref().map_or(0, |s| s.len());
        assert!(seen <= SEEN_ONCE_CAP);
        let fresh = format!("fresh {}", std::process::id());
        assert!(!repeated(BTreeMap::from([(fresh.as_str(), (1, 0))])).contains_key(fresh.as_str()));
    }
}
