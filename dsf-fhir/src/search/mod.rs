//! Search parameters, their index values and query parsing, shared by the storage backends
//! and the in-memory matching of websocket subscriptions.

mod extract;
mod matcher;
mod params;
mod query;

pub use crate::date::{parse_date_range, DateRange};
pub(crate) use extract::values_at;
pub use extract::{index_rows, IndexRow};
pub use params::{
    find_param, params_of, public_params, ParamKind, SearchParam, THUMBPRINT_EXTENSION,
    THUMBPRINT_PARAM,
};
pub use query::{
    parse_query_string, Clause, Condition, Include, Prefix, SearchBuilder, SearchQuery, Sort,
    SortKey, MAX_ALTERNATIVES, MAX_COUNT, MAX_PAGE, MAX_PARAMETERS,
};
