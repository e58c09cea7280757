//! Plugin lifecycle in the engine: upload (compile, check, version, register the
//! functions in SQL), list, delete, and which views call which plugin.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;
use datafusion::sql::sqlparser::ast;

use super::Engine;
use crate::plugin::{PluginEntry, PluginFunction, PluginStatus, Plugins};
use crate::{Error, Result};

impl Engine {
    pub fn plugins(&self) -> &Plugins {
        &self.inner.plugins
    }

    /// Every plugin function, as SQL scalar functions.
    pub(super) fn plugin_functions(&self) -> Vec<ScalarUDF> {
        self.inner
            .plugins
            .all()
            .into_iter()
            .flat_map(|entry| {
                let current = entry.current();
                current
                    .descriptor
                    .functions
                    .iter()
                    .map(|f| PluginFunction::udf(entry.clone(), f))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Whether ad hoc `sql` calls a plugin function.
    pub fn calls_plugins(&self, sql: &str) -> bool {
        match weir_sql::parse_statement(sql) {
            Ok(weir_sql::Statement::Query(stmt)) => match *stmt {
                ast::Statement::Query(q) => !self.plugins_called_by(&q).is_empty(),
                _ => false,
            },
            _ => false,
        }
    }

    /// The plugins whose functions a view's query calls.
    pub(super) fn plugins_called_by(&self, query: &ast::Query) -> Vec<Arc<PluginEntry>> {
        let mut called = HashSet::new();
        let _ = ast::visit_expressions(query, |e| {
            if let ast::Expr::Function(f) = e {
                called.insert(f.name.to_string().to_ascii_lowercase());
            }
            ControlFlow::<()>::Continue(())
        });
        self.inner
            .plugins
            .all()
            .into_iter()
            .filter(|p| {
                p.current()
                    .descriptor
                    .functions
                    .iter()
                    .any(|f| called.contains(&f.name.to_ascii_lowercase()))
            })
            .collect()
    }

    /// Views and streams that call `plugin`.
    fn views_using(&self, plugin: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .views
            .iter()
            .filter(|v| v.plugins.iter().any(|p| p.name == plugin))
            .map(|v| v.name.clone())
            .collect();
        names.sort();
        names.extend(self.streams_where(|s| s.plugin.name == plugin));
        names
    }

    pub fn plugin_statuses(&self) -> Vec<PluginStatus> {
        self.inner
            .plugins
            .all()
            .into_iter()
            .map(|p| p.status(self.views_using(&p.name)))
            .collect()
    }

    pub fn plugin_status(&self, name: &str) -> Result<PluginStatus> {
        let entry = self.inner.plugins.get(name).ok_or_else(|| unknown(name))?;
        Ok(entry.status(self.views_using(name)))
    }

    /// Upload a module as the next version of plugin `name`. It is compiled and checked
    /// first; a refusal says why and changes nothing.
    pub async fn upload_plugin(&self, name: &str, wasm: Vec<u8>) -> Result<PluginStatus> {
        check_plugin_name(name)?;
        let limit = self.inner.plugins.config().max_upload_bytes;
        if wasm.len() > limit {
            return Err(Error::TooLarge(format!(
                "the module is {} bytes; plugins may be at most {limit} bytes",
                wasm.len()
            )));
        }
        let engine = self.clone();
        let prepared = tokio::task::spawn_blocking(move || engine.inner.plugins.prepare(wasm))
            .await
            .map_err(|e| Error::Internal(format!("compiling the plugin panicked: {e}")))?
            .map_err(|e| e.of(name))?;
        let _ddl = self.inner.ddl.lock().await;
        let state = self.inner.adhoc.state();
        for f in &prepared.descriptor().functions {
            let taken_by = self.inner.plugins.all().into_iter().find(|p| {
                p.name != name
                    && p.current()
                        .descriptor
                        .functions
                        .iter()
                        .any(|g| g.name.eq_ignore_ascii_case(&f.name))
            });
            if let Some(other) = taken_by {
                return Err(Error::Conflict(format!(
                    "plugin {name} exports function {} which plugin {} already exports; rename one of them",
                    f.name, other.name
                )));
            }
            let builtin = state.scalar_functions().get(&f.name).is_some_and(|udf| {
                (udf.inner().as_ref() as &dyn std::any::Any)
                    .downcast_ref::<PluginFunction>()
                    .is_none()
            }) || state.aggregate_functions().contains_key(&f.name)
                || state.window_functions().contains_key(&f.name);
            if builtin {
                return Err(Error::BadRequest(format!(
                    "plugin {name} exports function {} which is a built-in SQL function; rename it",
                    f.name
                )));
            }
        }
        let before: Vec<String> = self
            .inner
            .plugins
            .get(name)
            .map(|e| {
                e.current()
                    .descriptor
                    .functions
                    .iter()
                    .map(|f| f.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let entry = self.inner.plugins.commit(name, prepared)?;
        let current = entry.current();
        for gone in before
            .iter()
            .filter(|g| !current.descriptor.functions.iter().any(|f| &f.name == *g))
        {
            self.inner.adhoc.deregister_udf(gone);
        }
        for f in &current.descriptor.functions {
            self.inner
                .adhoc
                .register_udf(PluginFunction::udf(entry.clone(), f));
        }
        Ok(entry.status(self.views_using(name)))
    }

    /// Remove a plugin no view uses.
    pub async fn delete_plugin(&self, name: &str) -> Result<()> {
        let _ddl = self.inner.ddl.lock().await;
        let entry = self.inner.plugins.get(name).ok_or_else(|| unknown(name))?;
        let users = self.views_using(name);
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "plugin {name} is used by {}; drop {} first",
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            )));
        }
        for f in &entry.current().descriptor.functions {
            self.inner.adhoc.deregister_udf(&f.name);
        }
        self.inner.plugins.remove(name);
        Ok(())
    }
}

fn unknown(name: &str) -> Error {
    Error::NotFound(format!(
        "no plugin named {name} (GET /api/v1/plugins lists them)"
    ))
}

fn check_plugin_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "plugin name {name:?} is not allowed: use lower-case letters, digits, _ and -, starting with a letter"
        )))
    }
}
