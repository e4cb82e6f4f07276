//! The `.entry` signatures of a PTX module: kernel names and parameter sizes.
//!
//! NVRTC writes one `.visible .entry NAME(` per kernel, then its parameters as
//! `.param .u64 NAME_param_0,` (pointers are `.u64`, possibly with `.ptr` / `.align`
//! qualifiers) up to the closing `)`. Only what a launch needs is read: the byte size
//! of each parameter, in order.

use std::collections::HashMap;

/// Kernel name → parameter sizes in bytes.
pub type Entries = HashMap<String, Vec<usize>>;

/// Parses every `.entry` of `ptx`. A module without `.version`/`.target` or with a
/// parameter type it cannot size is an error (the driver would reject it as well).
pub fn entries(ptx: &str) -> Result<Entries, String> {
    if !ptx.contains(".version") || !ptx.contains(".target") {
        return Err("not PTX text (no .version / .target directive)".into());
    }
    let mut out = Entries::new();
    for (i, _) in ptx.match_indices(".entry") {
        let rest = &ptx[i + ".entry".len()..];
        let open = rest.find('(').ok_or("an .entry without a parameter list")?;
        let name = rest[..open].trim().to_string();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("malformed .entry name {name:?}"));
        }
        let close = rest.find(')').ok_or("an .entry parameter list without `)`")?;
        let params = &rest[open + 1..close];
        let mut sizes = Vec::new();
        for p in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            sizes.push(param_size(p).ok_or_else(|| format!("kernel {name}: cannot size parameter `{p}`"))?);
        }
        out.insert(name, sizes);
    }
    Ok(out)
}

/// Size of one `.param` declaration: its scalar type, or `.b8 name[N]` arrays.
fn param_size(p: &str) -> Option<usize> {
    let toks: Vec<&str> = p.split_whitespace().collect();
    if toks.first() != Some(&".param") {
        return None;
    }
    let ty = toks.iter().find(|t| {
        t.len() >= 3
            && t.starts_with('.')
            && matches!(t.as_bytes()[1], b'u' | b's' | b'b' | b'f')
            && t[2..].chars().all(|c| c.is_ascii_digit())
    })?;
    let bits: usize = ty[2..].parse().ok()?;
    let last = toks.last()?;
    let count = match (last.find('['), last.find(']')) {
        (Some(a), Some(b)) => last[a + 1..b].parse().ok()?,
        _ => 1,
    };
    Some(bits / 8 * count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvrtc_style_signatures() {
        let ptx = ".version 9.0\n.target sm_90\n.address_size 64\n\
            .visible .entry axpby(\n\t.param .u64 axpby_param_0,\n\t.param .f32 axpby_param_1,\n\
            \t.param .u64 .ptr .align 1 axpby_param_2,\n\t.param .align 4 .b8 axpby_param_3[12]\n)\n{\n}\n\
            .visible .entry none()\n{\n}\n";
        let e = entries(ptx).unwrap();
        assert_eq!(e["axpby"], vec![8, 4, 8, 12]);
        assert_eq!(e["none"], Vec::<usize>::new());
        assert!(entries("garbage").is_err());
    }
}
