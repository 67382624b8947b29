//! The row generator's state: the plan, the parents' indices by kind, the current
//! table's PRNG; batches of rows, one table at a time.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::catalogue::{self as cat, Table};
use crate::normalise::SqlRow;

use super::ids::{h, S_TABLE_RNG};
use super::text::row_bytes;
use super::{BATCH_BYTES, BATCH_ROWS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DocType {
    Pdf,
    Xml,
    OpenApi,
    Postman,
}

impl DocType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            DocType::Pdf => "pdf",
            DocType::Xml => "xml",
            DocType::OpenApi => "openapi",
            DocType::Postman => "postman",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Pdf,
    Xml,
    OpenApi,
    Postman,
    Csv,
    Xlsx,
    Url,
    Audio,
    Image,
    Docx,
}

impl FileKind {
    pub(super) fn filetype(self) -> &'static str {
        match self {
            FileKind::Pdf => ".pdf",
            FileKind::Xml => ".xml",
            FileKind::OpenApi => ".yaml",
            FileKind::Postman => ".json",
            FileKind::Csv => ".csv",
            FileKind::Xlsx => ".xlsx",
            FileKind::Url => "url",
            FileKind::Audio => ".mp3",
            FileKind::Image => ".png",
            FileKind::Docx => ".docx",
        }
    }

    pub(super) fn stems(self) -> &'static [&'static str] {
        match self {
            FileKind::Pdf => &[
                "annual_report",
                "Q3_Financials",
                "Jahresbericht_2024",
                "Отчёт",
                "rapport_trimestriel",
                "Board deck — final",
                "報告書_第3四半期",
                "التقرير_السنوي",
                "דוח_רבעוני",
                "वार्षिक_रिपोर्ट",
            ],
            FileKind::Xml => &["app_errors", "lms_events", "payment_logs", "システムログ"],
            FileKind::OpenApi => &["petstore", "openapi", "学习平台接口", "billing-api"],
            FileKind::Postman => &["lending.postman_collection", "crm.postman_collection"],
            FileKind::Csv => &[
                "q3_campaigns",
                "ad_spend",
                "выручка_по_регионам",
                "ventes 2025",
            ],
            FileKind::Xlsx => &["budget", "forecast_FY26", "売上"],
            FileKind::Audio => &["standup", "earnings_call", "podcast 🎙️ ep"],
            FileKind::Image => &["chart", "whiteboard", "scan"],
            FileKind::Docx => &["contract", "memo (draft)", "policy, v2"],
            FileKind::Url => &[
                "https://example.com/pricing/{n}",
                "https://例子.测试/报告/page-{n}?q=a&b=ü",
                "https://docs.example.org/api?id={n}&lang=ru#section-2",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Pool {
    Pdf,
    Xml,
    Api,
    Any,
}

/// Row generation state: the plan, the parents' indices by kind, and the current
/// table's PRNG.
pub(super) struct Generator {
    pub(super) seed: u64,
    pub(super) plan: Vec<(&'static Table, u64)>,
    pub(super) n_artifact: u64,
    pub(super) n_document: u64,
    pub(super) n_evidence: u64,
    /// User ids cipher rows draw from: every `user_prefs` key and some more.
    pub(super) n_users: u64,
    pub(super) pdf_docs: Vec<u64>,
    pub(super) xml_docs: Vec<u64>,
    pub(super) api_docs: Vec<u64>,
    pub(super) table: usize,
    pub(super) next: u64,
    pub(super) rng: StdRng,
}

impl Generator {
    pub(super) fn new(seed: u64, plan: &[(&'static Table, u64)]) -> Generator {
        let count = |t: &Table| plan.iter().find(|(p, _)| *p == t).map_or(0, |(_, n)| *n);
        let n_prefs = count(&cat::USER_PREFS);
        let mut g = Generator {
            seed,
            plan: plan.to_vec(),
            n_artifact: count(&cat::ARTIFACT),
            n_document: count(&cat::DOCUMENT),
            n_evidence: count(&cat::EVIDENCE),
            n_users: n_prefs + n_prefs / 2 + 3,
            pdf_docs: Vec::new(),
            xml_docs: Vec::new(),
            api_docs: Vec::new(),
            table: 0,
            next: 0,
            rng: StdRng::seed_from_u64(h(seed, S_TABLE_RNG, 0)),
        };
        for i in 0..g.n_document {
            match g.doc_type(i) {
                DocType::Pdf => g.pdf_docs.push(i),
                DocType::Xml => g.xml_docs.push(i),
                DocType::OpenApi | DocType::Postman => g.api_docs.push(i),
            }
        }
        g
    }

    /// The next batch of rows of one table, tables in plan order.
    pub(super) fn next_batch(&mut self) -> Option<(&'static Table, Vec<SqlRow>)> {
        loop {
            let (table, n) = *self.plan.get(self.table)?;
            if self.next >= n {
                self.table += 1;
                self.next = 0;
                self.rng = StdRng::seed_from_u64(h(self.seed, S_TABLE_RNG, self.table as u64));
                continue;
            }
            let left = usize::try_from(n - self.next).unwrap_or(usize::MAX);
            let mut rows = Vec::with_capacity(left.min(BATCH_ROWS));
            let mut bytes = 0;
            while self.next < n && rows.len() < BATCH_ROWS && bytes < BATCH_BYTES {
                let r = self.row(table, self.next);
                bytes += row_bytes(&r);
                rows.push(r);
                self.next += 1;
            }
            return Some((table, rows));
        }
    }

    pub(super) fn row(&mut self, t: &'static Table, i: u64) -> SqlRow {
        match t.sqlite {
            "artifact" => self.artifact(i),
            "document" => self.document(i),
            "section" => self.section(i),
            "doctable" => self.doctable(i),
            "apiendpoint" => self.apiendpoint(i),
            "logentry" => self.logentry(i),
            "tagrow" => self.tagrow(i),
            "fact" => self.fact(i),
            "evidence" => self.evidence(i),
            "tagprompt" => self.tagprompt(i),
            "summaries" => self.summary(i),
            "document_entities" => self.entity(i),
            "document_structure" => self.structure(i),
            "document_metric_hits" => self.metric_hit(i),
            "cipher_memory" => self.memory(i),
            "user_prefs" => self.user_pref(i),
            "skills_registry" => self.skill(i),
            other => unreachable!("the plan holds only DoX tables, not {other}"),
        }
    }
}
