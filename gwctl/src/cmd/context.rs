//! `context list | use | set`: edits the gwctl config file (no connection).

use anyhow::{anyhow, bail};
use serde::Serialize;

use crate::cli::{ContextCmd, Global};
use crate::ctx::{ContextConfig, config_path, load_file, save_file};
use crate::out::{Table, View};

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    current: bool,
    controlplane: Option<&'a str>,
    gateway: Option<&'a str>,
}

pub fn run(g: &Global, c: ContextCmd) -> anyhow::Result<View> {
    let path = config_path(g).ok_or_else(|| {
        anyhow!("no place for the gwctl config: set --config, GWCTL_CONFIG or HOME")
    })?;
    let mut file = load_file(&path)?;
    match c {
        ContextCmd::List => {
            let current = file.current_context.clone();
            let is_current = |c: &ContextConfig| current.as_deref() == Some(c.name.as_str());
            Ok(View::list(
                "contexts",
                &file.contexts,
                vec!["CURRENT", "NAME", "CONTROLPLANE", "GATEWAY"],
                |c| Row {
                    name: &c.name,
                    current: is_current(c),
                    controlplane: c.controlplane.as_deref(),
                    gateway: c.gateway.as_deref(),
                },
                |c| {
                    vec![
                        if is_current(c) { "*" } else { "" }.to_string(),
                        c.name.clone(),
                        c.controlplane.clone().unwrap_or_default(),
                        c.gateway.clone().unwrap_or_default(),
                    ]
                },
            ))
        }
        ContextCmd::Use { name } => {
            if !file.contexts.iter().any(|c| c.name == name) {
                let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
                bail!(
                    "no context named {name:?} in {} (known: {}); create it with `gwctl context set {name} …`",
                    path.display(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                );
            }
            file.current_context = Some(name.clone());
            save_file(&path, &file)?;
            Ok(lines(format!(
                "current context: {name} ({})",
                path.display()
            )))
        }
        ContextCmd::Set {
            name,
            controlplane,
            gateway,
            token_file,
            token_env,
            ca_file,
            cert_file,
            key_file,
            current,
        } => {
            if name.is_empty() {
                bail!("a context needs a name");
            }
            let i = match file.contexts.iter().position(|c| c.name == name) {
                Some(i) => i,
                None => {
                    file.contexts.push(ContextConfig {
                        name: name.clone(),
                        ..Default::default()
                    });
                    file.contexts.len() - 1
                }
            };
            let c = &mut file.contexts[i];
            set(&mut c.controlplane, controlplane);
            set(&mut c.gateway, gateway);
            set(&mut c.token_file, token_file);
            set(&mut c.token_env, token_env);
            set(&mut c.ca_file, ca_file);
            set(&mut c.cert_file, cert_file);
            set(&mut c.key_file, key_file);
            if current || file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            save_file(&path, &file)?;
            Ok(lines(format!("context {name} saved in {}", path.display())))
        }
    }
}

/// Only the fields given change.
fn set<T>(slot: &mut Option<T>, v: Option<T>) {
    if v.is_some() {
        *slot = v;
    }
}

fn lines(l: String) -> View {
    #[derive(Serialize)]
    struct Done<'a> {
        message: &'a str,
    }
    View::of(&Done { message: &l }, Table::Lines(vec![l.clone()]))
}
