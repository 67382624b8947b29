//! Ids and parent attributes as pure functions of (seed, salt, row index), so a
//! child names its parent without any parent row being kept; and the references a
//! row draws from its table's PRNG.

use rand::Rng;

use crate::normalise::SqlValue;

use super::generator::{DocType, FileKind, Generator, Pool};
use super::text::{text, timestamp};

/// SplitMix64's finaliser: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn h(seed: u64, salt: u64, i: u64) -> u64 {
    mix(seed ^ mix(salt ^ mix(i)))
}

/// FNV-1a, to derive a salt from a name at compile time.
pub(super) const fn salt(name: &str) -> u64 {
    let b = name.as_bytes();
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < b.len() {
        x ^= b[i] as u64;
        x = x.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    x
}

const S_ARTIFACT: u64 = salt("artifact");
const S_DOCUMENT: u64 = salt("document");
const S_EVIDENCE: u64 = salt("evidence");
const S_USER: u64 = salt("user");
const S_DOCTYPE: u64 = salt("doctype");
const S_KIND: u64 = salt("kind");
const S_STEM: u64 = salt("stem");
const S_ODD: u64 = salt("odd");
pub(super) const S_TABLE_RNG: u64 = salt("table rng");

const M48: u64 = (1 << 48) - 1;

/// A bijection on 48 bits (odd multipliers and xorshifts), so the last uuid
/// group is distinct for every row index of a table: ids never collide.
fn permute48(mut x: u64) -> u64 {
    x &= M48;
    x = x.wrapping_mul(0x9e37_79b9_7f4b) & M48;
    x ^= x >> 23;
    x = x.wrapping_mul(0x2545_f491_4f6d) & M48;
    x ^= x >> 21;
    x
}

/// A uuid-shaped id (`version` 4 or 5), unique per (salt, i).
pub(super) fn uuid_like(seed: u64, salt: u64, i: u64, version: u8) -> String {
    let a = h(seed, salt, i);
    let b = h(seed, salt ^ 0x5555_5555, i);
    let node = permute48(i ^ h(seed, salt, u64::MAX));
    format!(
        "{:08x}-{:04x}-{version:x}{:03x}-{:04x}-{node:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b & 0x3fff),
    )
}

/// One row index in this many gets a key made of odd characters.
const ODD_EVERY: u64 = 257;

/// Keys made of characters that trip URL filters, CSV, SQL quoting and
/// collations. `{n}` is the row index, which keeps each key unique.
const ODD_KEYS: &[&str] = &[
    "key with spaces {n}",
    "quote \"double\" and 'single' {n}",
    "comma,separated,{n}",
    "(parenthesised) [bracketed] {braced} {n}",
    "100% done, 50%25 encoded {n}",
    "a=b&c=d?e#frag {n}",
    "path/to\\key {n}",
    "in.(a,b) {n}",
    "eq.{n}",
    "Ærø naïve café — 日本語キー {n}",
    "ключ {n}",
    "مفتاح {n}",
    "מפתח {n}",
    "कुंजी {n}",
    "👩‍💻 key 🏳️‍🌈 {n}",
    "  padded {n}  ",
    "null {n}",
    "*star* +plus+ :colon: ;semi; {n}",
    "tab\there {n}",
    "line\nbreak {n}",
    "Cafe\u{301} (decomposed) {n}",
];

fn odd_key(seed: u64, salt: u64, i: u64) -> String {
    let t = ODD_KEYS[(h(seed, salt ^ S_ODD, i) % ODD_KEYS.len() as u64) as usize];
    t.replace("{n}", &i.to_string())
}

impl Generator {
    // --- ids and parent attributes (pure functions of seed and index) ---

    /// The key of row `i` of a table: uuid-like, or (one in [`ODD_EVERY`]) made
    /// of odd characters.
    pub(super) fn key(&self, salt: u64, i: u64, version: u8) -> String {
        if i % ODD_EVERY == 1 {
            odd_key(self.seed, salt, i)
        } else {
            uuid_like(self.seed, salt, i, version)
        }
    }

    pub(super) fn artifact_id(&self, i: u64) -> String {
        uuid_like(self.seed, S_ARTIFACT, i, 4)
    }

    /// The first four documents have one type each, so small files hold them all.
    pub(super) fn doc_type(&self, i: u64) -> DocType {
        match i {
            0 => DocType::Pdf,
            1 => DocType::Xml,
            2 => DocType::OpenApi,
            3 => DocType::Postman,
            _ => match h(self.seed, S_DOCTYPE, i) % 100 {
                0..50 => DocType::Pdf,
                50..70 => DocType::Xml,
                70..88 => DocType::OpenApi,
                _ => DocType::Postman,
            },
        }
    }

    /// Document `i` (existing when `i < n_document`). DoX gives a PDF's document
    /// the id of its artifact.
    pub(super) fn doc_id(&self, i: u64) -> String {
        if self.doc_type(i) == DocType::Pdf && i < self.n_artifact {
            self.artifact_id(i)
        } else {
            self.key(S_DOCUMENT, i, 4)
        }
    }

    /// The first artifacts are the documents' files; the rest are other uploads.
    pub(super) fn artifact_kind(&self, i: u64) -> FileKind {
        if i < self.n_document {
            return match self.doc_type(i) {
                DocType::Pdf => FileKind::Pdf,
                DocType::Xml => FileKind::Xml,
                DocType::OpenApi => FileKind::OpenApi,
                DocType::Postman => FileKind::Postman,
            };
        }
        match h(self.seed, S_KIND, i) % 100 {
            0..30 => FileKind::Pdf,
            30..50 => FileKind::Csv,
            50..60 => FileKind::Xlsx,
            60..75 => FileKind::Url,
            75..83 => FileKind::Audio,
            83..91 => FileKind::Image,
            _ => FileKind::Docx,
        }
    }

    /// The file name (for URL artifacts: the URL).
    pub(super) fn artifact_filename(&self, i: u64) -> String {
        let kind = self.artifact_kind(i);
        let stems = kind.stems();
        let stem = stems[(h(self.seed, S_STEM, i) % stems.len() as u64) as usize];
        match kind {
            FileKind::Url => stem.replace("{n}", &i.to_string()),
            _ => format!("{stem}_{i}{}", kind.filetype()),
        }
    }

    pub(super) fn evidence_id(&self, i: u64) -> String {
        self.key(S_EVIDENCE, i, 4)
    }

    /// User ids as DoX holds them: `dev_user`, agent names, e-mail addresses, odd
    /// strings, and mostly uuids.
    pub(super) fn user_id(&self, i: u64) -> String {
        match i {
            0 => "dev_user".into(),
            1 => "agent-zero".into(),
            2 => "analyst@example.com".into(),
            _ => match h(self.seed, S_USER, i) % 100 {
                0..10 => format!("user{i}@example.com"),
                10..18 => format!("agent-{i}"),
                18..24 => odd_key(self.seed, S_USER, i),
                _ => uuid_like(self.seed, S_USER, i, 4),
            },
        }
    }

    // --- references drawn from the table's PRNG ---

    /// A document id for a child row: mostly an existing document of the
    /// pool's type; about 1% are orphans (a document that does not exist, which
    /// may be the id of a non-document artifact).
    pub(super) fn doc_ref(&mut self, pool: Pool) -> String {
        if self.n_document == 0 || self.rng.gen_range(0..1000) < 10 {
            let i = self.n_document + self.rng.gen_range(0..self.n_document.max(64));
            return self.doc_id(i);
        }
        let pool: &[u64] = match pool {
            Pool::Pdf => &self.pdf_docs,
            Pool::Xml => &self.xml_docs,
            Pool::Api => &self.api_docs,
            Pool::Any => &[],
        };
        let i = if pool.is_empty() {
            self.rng.gen_range(0..self.n_document)
        } else {
            pool[self.rng.gen_range(0..pool.len())]
        };
        self.doc_id(i)
    }

    /// An artifact index for a child row; indices past `n_artifact` are orphans.
    pub(super) fn artifact_ref(&mut self) -> u64 {
        if self.n_artifact == 0 || self.rng.gen_range(0..1000) < 10 {
            self.n_artifact + self.rng.gen_range(0..self.n_artifact.max(64))
        } else {
            self.rng.gen_range(0..self.n_artifact)
        }
    }

    pub(super) fn maybe(&mut self, p_null: f64, f: impl FnOnce(&mut Self) -> SqlValue) -> SqlValue {
        if self.rng.gen_bool(p_null) {
            SqlValue::Null
        } else {
            f(self)
        }
    }

    pub(super) fn ts(&mut self) -> SqlValue {
        text(timestamp(&mut self.rng))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_uuid_shaped_and_distinct() {
        let mut seen = HashSet::new();
        for i in 0..200_000 {
            let id = uuid_like(9, S_DOCUMENT, i, 4);
            assert!(seen.insert(id.clone()), "{id}");
            let b = id.as_bytes();
            assert_eq!(b.len(), 36);
            assert_eq!((b[8], b[13], b[18], b[23]), (b'-', b'-', b'-', b'-'));
            assert_eq!(b[14], b'4');
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'));
        }
    }
}
