//! `conveyor graph`: the topology as a Mermaid or Graphviz DOT diagram —
//! transports (as groups), entities, sources, workers, and the dead-letter
//! and retry edges.

use crate::config::Config;

fn id(prefix: &str, name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{prefix}_{clean}")
}

/// Mermaid `flowchart LR` text.
pub fn mermaid(cfg: &Config) -> String {
    let mut s = String::from("flowchart LR\n");
    for (t, tc) in &cfg.transports {
        s += &format!("  subgraph {}[\"{t} ({})\"]\n", id("t", t), tc.kind());
        for (e, ec) in cfg.entities.iter().filter(|(_, ec)| &ec.transport == t) {
            s += &format!("    {}[(\"{e}\")]\n", id("e", e));
            let _ = ec;
        }
        s += "  end\n";
    }
    for (n, src) in &cfg.sources {
        s += &format!("  {}([\"{n}: {}\"]) --> {}\n", id("s", n), src.kind(), id("e", src.entity()));
    }
    for (n, w) in &cfg.workers {
        let wid = id("w", n);
        s += &format!("  {wid}[[\"{n}: {}\"]]\n", w.stage.kind());
        s += &format!("  {} --> {wid}\n", id("e", &w.input));
        for (o, e) in &w.outputs {
            s += &format!("  {wid} -->|{o}| {}\n", id("e", e));
        }
        if let Some(d) = &w.dead_letter {
            s += &format!("  {wid} -. dead letter .-> {}\n", id("e", d));
        }
        if let Some(r) = &w.retry {
            s += &format!("  {wid} -. retry .-> {}\n", id("e", &r.via));
            s += &format!("  {} -. due .-> {}\n", id("e", &r.via), id("e", &w.input));
        }
    }
    s
}

/// Graphviz DOT text.
pub fn dot(cfg: &Config) -> String {
    let mut s = String::from("digraph conveyor {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    for (t, tc) in &cfg.transports {
        s += &format!("  subgraph cluster_{} {{\n    label=\"{t} ({})\";\n", id("t", t), tc.kind());
        for e in cfg.entities.iter().filter(|(_, ec)| &ec.transport == t).map(|(e, _)| e) {
            s += &format!("    {} [label=\"{e}\", shape=cylinder];\n", id("e", e));
        }
        s += "  }\n";
    }
    for (n, src) in &cfg.sources {
        s += &format!(
            "  {} [label=\"{n}: {}\", shape=oval];\n  {} -> {};\n",
            id("s", n),
            src.kind(),
            id("s", n),
            id("e", src.entity())
        );
    }
    for (n, w) in &cfg.workers {
        let wid = id("w", n);
        s += &format!("  {wid} [label=\"{n}: {}\", shape=box];\n  {} -> {wid};\n", w.stage.kind(), id("e", &w.input));
        for (o, e) in &w.outputs {
            s += &format!("  {wid} -> {} [label=\"{o}\"];\n", id("e", e));
        }
        if let Some(d) = &w.dead_letter {
            s += &format!("  {wid} -> {} [style=dashed, label=\"dead letter\"];\n", id("e", d));
        }
        if let Some(r) = &w.retry {
            s += &format!("  {wid} -> {} [style=dashed, label=\"retry\"];\n", id("e", &r.via));
            s += &format!("  {} -> {} [style=dotted, label=\"due\"];\n", id("e", &r.via), id("e", &w.input));
        }
    }
    s + "}\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_edge() {
        let cfg = crate::config::load_str(
            r#"
transports: { local: { type: embedded } }
entities: { a: { transport: local }, b: { transport: local }, d: { transport: local }, r: { transport: local } }
sources: { sim: { type: simulator, entity: a } }
workers:
  w: { input: a, outputs: { default: b }, dead_letter: d, retry: { via: r } }
"#,
            std::path::Path::new("t.yaml"),
            |_| None,
        )
        .unwrap()
        .config;
        let m = mermaid(&cfg);
        for edge in [
            "s_sim([\"sim: simulator\"]) --> e_a",
            "e_a --> w_w",
            "w_w -->|default| e_b",
            "w_w -. dead letter .-> e_d",
            "e_r -. due .-> e_a",
        ] {
            assert!(m.contains(edge), "{edge} in\n{m}");
        }
        let d = dot(&cfg);
        assert!(d.contains("w_w -> e_d [style=dashed, label=\"dead letter\"];"), "{d}");
        assert!(d.starts_with("digraph conveyor {") && d.ends_with("}\n"));
    }
}
