//! A cache of recent message embeddings in front of any [`Encoder`]: in chat moderation the
//! same short messages ("hi", "gg", a copied spam line) recur across users and windows, and a
//! repeated text should not be encoded twice. Bounded: the oldest entries go first.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use crate::{Encoder, Matrix, SentinelError};

/// An encoder that remembers the last `capacity` distinct texts it embedded.
pub struct CachedEncoder<E> {
    inner: E,
    capacity: usize,
    state: RefCell<CacheState>,
}

#[derive(Default)]
struct CacheState {
    rows: HashMap<String, Vec<f32>>,
    order: VecDeque<String>,
    hits: u64,
    misses: u64,
}

impl<E: Encoder> CachedEncoder<E> {
    /// Wrap `inner`, keeping at most `capacity` embeddings.
    pub fn new(inner: E, capacity: usize) -> Self {
        Self {
            inner,
            capacity: capacity.max(1),
            state: RefCell::new(CacheState::default()),
        }
    }

    /// Texts served from the cache and texts encoded, so far.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.hits, s.misses)
    }
}

impl<E: Encoder> Encoder for CachedEncoder<E> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn encode(&self, texts: &[String]) -> Result<Matrix, SentinelError> {
        let dim = self.inner.dim();
        let mut st = self.state.borrow_mut();
        // distinct texts not cached, in first-appearance order
        let mut missing: Vec<String> = Vec::new();
        for t in texts {
            if !st.rows.contains_key(t) && !missing.contains(t) {
                missing.push(t.clone());
            }
        }
        st.misses += missing.len() as u64;
        st.hits += (texts.len() - missing.len()) as u64;
        let fresh = if missing.is_empty() {
            None
        } else {
            Some(self.inner.encode(&missing)?)
        };
        let mut data = Vec::with_capacity(texts.len() * dim);
        let fresh_index: HashMap<&str, usize> = missing
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        for t in texts {
            match (st.rows.get(t), fresh_index.get(t.as_str()), &fresh) {
                (Some(row), _, _) => data.extend_from_slice(row),
                (None, Some(&i), Some(m)) => data.extend_from_slice(m.row(i)),
                _ => {
                    return Err(SentinelError::Internal("embedding cache lost a row".into()));
                }
            }
        }
        if let Some(m) = &fresh {
            for (i, t) in missing.iter().enumerate() {
                st.rows.insert(t.clone(), m.row(i).to_vec());
                st.order.push_back(t.clone());
            }
            while st.order.len() > self.capacity {
                if let Some(old) = st.order.pop_front() {
                    st.rows.remove(&old);
                }
            }
        }
        Ok(Matrix {
            data,
            rows: texts.len(),
            dim,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Counts what reaches the inner encoder; each text maps to a distinct vector.
    struct Counting(RefCell<Vec<String>>);

    impl Encoder for Counting {
        fn dim(&self) -> usize {
            2
        }
        fn name(&self) -> &str {
            "counting"
        }
        fn encode(&self, texts: &[String]) -> Result<Matrix, SentinelError> {
            self.0.borrow_mut().extend(texts.iter().cloned());
            let data = texts.iter().flat_map(|t| [t.len() as f32, 1.0]).collect();
            Ok(Matrix {
                data,
                rows: texts.len(),
                dim: 2,
            })
        }
    }

    #[test]
    fn repeated_texts_are_encoded_once_and_rows_stay_in_order() {
        let c = CachedEncoder::new(Counting(RefCell::new(Vec::new())), 2);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let m = c.encode(&s(&["gg", "hello", "gg"])).unwrap();
        assert_eq!(m.data, vec![2.0, 1.0, 5.0, 1.0, 2.0, 1.0]);
        c.encode(&s(&["hello"])).unwrap();
        assert_eq!(c.inner.0.borrow().clone(), s(&["gg", "hello"]));
        assert_eq!(c.stats(), (2, 2));
        // capacity 2: "abc" evicts "gg"
        c.encode(&s(&["abc"])).unwrap();
        c.encode(&s(&["gg"])).unwrap();
        assert_eq!(c.inner.0.borrow().len(), 4);
    }
}
