//! `GET /v1/deliveries?after=&limit=`: the webhook delivery records, every
//! attempt in the order it was recorded, paged by record id. Operators and
//! admins only (403 `forbidden` for agents and submitters): a record names
//! webhooks and notices across every stage. Delivering is `crate::webhooks`.

use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::openapi::ListRefusals;
use crate::http::principal::{Principal, forbidden};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use baton_api as api;
use baton_api::Timestamp;
use baton_core::auth::Role;
use baton_core::store::{Delivery, DeliveryStatus};

/// `GET /v1/deliveries`: delivery records after `after`, oldest first.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    operation_id = "list_deliveries",
    summary = "List webhook delivery attempts",
    tag = "webhooks",
    params(api::DeliveryQuery),
    responses(
        (status = 200, description = "Delivery records after `after`, in order.", body = api::DeliveryPage),
        ListRefusals,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<api::DeliveryQuery>,
) -> Result<Json<api::DeliveryPage>, ApiError> {
    if let Principal::Authenticated(p) = &principal
        && !matches!(p.role, Role::Operator | Role::Admin)
    {
        return Err(forbidden(format!(
            "principal {} has role {}, which may not read webhook deliveries (operators and admins may)",
            p.name, p.role
        )));
    }
    let limit = query.limit.unwrap_or(api::limits::PAGE_SIZE_DEFAULT);
    let page_max = state.options().limits.page_size_max;
    if limit == 0 {
        return Err(ApiError::invalid("limit", "must be at least 1"));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if limit > page_max {
        return Err(ApiError::limit("page_size_max", page_max as u64, "ask for fewer records per page"));
    }
    let records = state.store().deliveries(query.after.unwrap_or(0), limit).await?;
    let next_after = (records.len() >= limit).then(|| records.last().map(|(id, _)| *id)).flatten();
    Ok(Json(api::DeliveryPage {
        deliveries: records.iter().map(|(id, d)| delivery(*id, d)).collect(),
        next_after,
    }))
}

fn delivery(id: u64, d: &Delivery) -> api::Delivery {
    api::Delivery {
        id,
        notice: d.notice,
        webhook: d.webhook.clone(),
        attempt: d.attempt,
        at: Timestamp(d.at),
        status: match &d.status {
            DeliveryStatus::Delivered { http_status } => {
                api::DeliveryStatus::Delivered { http_status: *http_status }
            }
            DeliveryStatus::Failed { error, retry_at } => {
                api::DeliveryStatus::Failed { error: error.clone(), retry_at: Timestamp(*retry_at) }
            }
            DeliveryStatus::GaveUp { error } => api::DeliveryStatus::GaveUp { error: error.clone() },
        },
    }
}
