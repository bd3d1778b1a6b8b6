//! The dense embedding matrix every part of Sentinel passes around (index, search, encoder).

use crate::SentinelError;

/// A dense row-major f32 matrix of unit-length embeddings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matrix {
    /// `rows * dim` values.
    pub data: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Row length.
    pub dim: usize,
}

impl Matrix {
    /// A matrix from rows of equal length.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Self, SentinelError> {
        let dim = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != dim) {
            return Err(SentinelError::BadInput(
                "embedding rows have different lengths".into(),
            ));
        }
        Ok(Self {
            data: rows.concat(),
            rows: rows.len(),
            dim,
        })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// A new matrix holding the given rows, in the given order.
    pub fn select(&self, rows: &[usize]) -> Self {
        let mut data = Vec::with_capacity(rows.len() * self.dim);
        for &r in rows {
            data.extend_from_slice(self.row(r));
        }
        Self {
            data,
            rows: rows.len(),
            dim: self.dim,
        }
    }

    /// Rescale every row to unit length (eps 1e-12, as `torch.nn.functional.normalize`).
    pub fn normalize_rows(&mut self) {
        let dim = self.dim;
        if dim == 0 {
            return;
        }
        for row in self.data.chunks_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            for x in row {
                *x /= norm;
            }
        }
    }
}
