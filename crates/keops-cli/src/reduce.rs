//! `keops reduce`: one reduction of `.npy` arrays, written back as `.npy`.

use crate::error::{CliError, Result};
use crate::npy::{self, Dtype, FloatArray};
use keops::{Arg, Backend, Element, Genred, Options, Reduced, Reduction};
use std::path::{Path, PathBuf};

/// Usage text of `keops reduce`.
pub const USAGE: &str = "\
Usage: keops reduce FORMULA --arg NAME=CAT:FILE.npy [--arg ...] --reduction NAME --axis 0|1 -o OUT.npy [options]

Reduces the symbolic matrix FORMULA(x_i, y_j, p) over i (--axis 0) or j (--axis 1).

Arguments:
  FORMULA                   a KeOps formula, e.g. 'Exp(-SqDist(x,y)*g)*b'
  --arg NAME=CAT:FILE.npy   an argument: CAT is Vi (indexed by i), Vj (by j) or Pm (a
                            parameter); arguments are numbered in the order given and NAME
                            stands for CAT(index, dim), dim = last axis of the array.
                            Shapes: Vi/Vj (..., n, d) or (n,); Pm (..., d), (d,) or ().
  --reduction NAME          Sum, LogSumExp, SumSoftMaxWeight, Min, Max, ArgMin, ArgMax,
                            Min_ArgMin, Max_ArgMax, KMin, ArgKMin, KMin_ArgKMin
  --axis 0|1                0: one output row per j (reduce over i); 1: one per i (reduce over j)
  -o, --output OUT.npy      values (or indices, for ArgMin/ArgMax/ArgKMin) go here; with both,
                            indices go to OUT_indices.npy (int64)

Options:
  --k K                     K of KMin, ArgKMin, KMin_ArgKMin
  --weight FORMULA2         second formula of SumSoftMaxWeight (and weighted LogSumExp)
  --dtype float32|float64   computation and output dtype (default: the first argument's)
  --threads N               CPU threads (default: one per core)
  --backend auto|CPU|GPU    where to run (default: auto)
  -h, --help                this help

Input files are float32 or float64 .npy files in C order. A formula may start with '-'
(e.g. '-SqDist(x,y)'); put `--` right before it if it could be read as an option.
";

/// Category of an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// Indexed by `i`.
    Vi,
    /// Indexed by `j`.
    Vj,
    /// A parameter.
    Pm,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Category::Vi => "Vi",
            Category::Vj => "Vj",
            Category::Pm => "Pm",
        }
    }
}

/// One `--arg NAME=CAT:FILE` specification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// The alias name used in the formula.
    pub name: String,
    /// Its category.
    pub cat: Category,
    /// The `.npy` file.
    pub path: PathBuf,
}

impl ArgSpec {
    /// Parses `NAME=CAT:FILE`.
    pub fn parse(s: &str) -> Result<ArgSpec> {
        let bad = |why: &str| {
            CliError::new(format!(
                "--arg {s:?}: {why}; expected NAME=CAT:FILE.npy, e.g. x=Vi:x.npy"
            ))
        };
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let name = name.trim();
        let mut chars = name.chars();
        let ident = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(bad(&format!("{name:?} is not a valid name")));
        }
        let (cat, path) = rest
            .split_once(':')
            .ok_or_else(|| bad("no ':' between category and file"))?;
        let cat = match cat.trim() {
            "Vi" => Category::Vi,
            "Vj" => Category::Vj,
            "Pm" => Category::Pm,
            other => return Err(bad(&format!("category {other:?} is not one of Vi, Vj, Pm"))),
        };
        if path.is_empty() {
            return Err(bad("empty file name"));
        }
        Ok(ArgSpec {
            name: name.to_string(),
            cat,
            path: PathBuf::from(path),
        })
    }
}

/// Everything `keops reduce` was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceArgs {
    /// The reduced formula.
    pub formula: String,
    /// The arguments, by position.
    pub args: Vec<ArgSpec>,
    /// The reduction's KeOps name.
    pub reduction: String,
    /// `K` of the K-min family.
    pub k: Option<usize>,
    /// The weight formula (`formula2`).
    pub weight: Option<String>,
    /// 0 or 1.
    pub axis: usize,
    /// Output path.
    pub out: PathBuf,
    /// Computation dtype (default: the first argument's).
    pub dtype: Option<Dtype>,
    /// CPU threads.
    pub threads: Option<usize>,
    /// Backend.
    pub backend: Backend,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// Print the usage.
    Help,
    /// Run a reduction.
    Run(ReduceArgs),
}

/// Splits `--flag=value` and reads the value of a flag from the next argument otherwise.
pub struct ArgIter<'a> {
    args: &'a [String],
    pos: usize,
    inline: Option<&'a str>,
}

impl<'a> ArgIter<'a> {
    /// Iterates over `args`.
    pub fn new(args: &'a [String]) -> Self {
        ArgIter {
            args,
            pos: 0,
            inline: None,
        }
    }

    /// The next raw argument; `--flag=value` is split into the flag (returned) and a value
    /// kept for [`ArgIter::value`]. Arguments that start with a single `-` but are not a
    /// known short flag are left whole (formulas such as `-SqDist(x,y)`).
    pub fn next_arg(&mut self) -> Result<Option<&'a str>> {
        if let Some(v) = self.inline.take() {
            return Err(CliError::new(format!("unexpected value {v:?}")));
        }
        let Some(a) = self.args.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        if a.starts_with("--") {
            if let Some((flag, value)) = a.split_once('=') {
                self.inline = Some(value);
                return Ok(Some(flag));
            }
        }
        Ok(Some(a))
    }

    /// The value of `flag`: the inline `=value` or the next argument.
    pub fn value(&mut self, flag: &str) -> Result<&'a str> {
        if let Some(v) = self.inline.take() {
            return Ok(v);
        }
        let v = self
            .args
            .get(self.pos)
            .ok_or_else(|| CliError::new(format!("{flag} needs a value")))?;
        self.pos += 1;
        Ok(v)
    }

    /// Whether a flag was given an inline `=value` it does not take.
    pub fn no_value(&mut self, flag: &str) -> Result<()> {
        match self.inline.take() {
            Some(v) => Err(CliError::new(format!("{flag} takes no value (got {v:?})"))),
            None => Ok(()),
        }
    }
}

/// Parses a positive integer option.
pub fn parse_count(flag: &str, v: &str) -> Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(CliError::new(format!(
            "{flag}: {v:?} is not a positive integer"
        ))),
    }
}

/// Parses the arguments of `keops reduce` (after the sub-command name).
pub fn parse(argv: &[String]) -> Result<Parsed> {
    let mut it = ArgIter::new(argv);
    let mut formula = None;
    let mut args = Vec::new();
    let (mut reduction, mut k, mut weight, mut axis, mut out) = (None, None, None, None, None);
    let (mut dtype, mut threads, mut backend) = (None, None, Backend::Auto);
    // `--` makes the next argument the formula, even if it looks like an option.
    let mut next_is_formula = false;
    while let Some(a) = it.next_arg()? {
        let flag = if std::mem::take(&mut next_is_formula) {
            ""
        } else {
            a
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--" => next_is_formula = true,
            "--arg" => args.push(ArgSpec::parse(it.value(a)?)?),
            "--reduction" => reduction = Some(it.value(a)?.to_string()),
            "--k" | "--K" => k = Some(parse_count("--k", it.value(a)?)?),
            "--weight" | "--formula2" => weight = Some(it.value(a)?.to_string()),
            "--axis" => {
                axis = Some(match it.value(a)?.trim() {
                    "0" | "i" => 0,
                    "1" | "j" => 1,
                    v => return Err(CliError::new(format!("--axis: {v:?} is not 0 or 1"))),
                })
            }
            "-o" | "--output" | "--out" => out = Some(PathBuf::from(it.value(a)?)),
            "--dtype" => dtype = Some(Dtype::from_name(it.value(a)?.trim())?),
            "--threads" => threads = Some(parse_count("--threads", it.value(a)?)?),
            "--backend" => {
                let v = it.value(a)?.trim();
                backend = Backend::from_name(v).map_err(|_| {
                    CliError::new(format!("--backend: {v:?} is not one of auto, CPU, GPU"))
                })?
            }
            f if f.starts_with("--") => {
                it.no_value(f)?;
                return Err(CliError::new(format!(
                    "unknown option {f:?} (try `keops reduce --help`)"
                )));
            }
            _ => {
                if formula.is_some() {
                    return Err(CliError::new(format!(
                        "unexpected argument {a:?}: the formula is already given (quote the formula)"
                    )));
                }
                formula = Some(a.to_string());
            }
        }
    }
    let missing = |what: &str| CliError::new(format!("missing {what} (try `keops reduce --help`)"));
    let formula = formula.ok_or_else(|| missing("FORMULA"))?;
    if formula.trim().is_empty() {
        return Err(CliError::new("the formula is empty"));
    }
    Ok(Parsed::Run(ReduceArgs {
        formula,
        args,
        reduction: reduction.ok_or_else(|| missing("--reduction NAME"))?,
        k,
        weight,
        axis: axis.ok_or_else(|| missing("--axis 0|1 (0: reduce over i, 1: reduce over j)"))?,
        out: out.ok_or_else(|| missing("-o OUT.npy"))?,
        dtype,
        threads,
        backend,
    }))
}

/// `keops reduce ...`.
pub fn main(argv: &[String]) -> Result<()> {
    match parse(argv)? {
        Parsed::Help => {
            say!("{}", USAGE.trim_end());
            Ok(())
        }
        Parsed::Run(a) => {
            for w in run(&a)? {
                say!(
                    "wrote {} ({}, shape {:?})",
                    w.path.display(),
                    w.dtype,
                    w.shape
                );
            }
            Ok(())
        }
    }
}

/// The path of the indices when values go to `out`: `OUT.npy` -> `OUT_indices.npy`.
pub fn indices_path(out: &Path) -> PathBuf {
    let s = out.to_string_lossy();
    match s.strip_suffix(".npy") {
        Some(stem) => PathBuf::from(format!("{stem}_indices.npy")),
        None => PathBuf::from(format!("{s}_indices.npy")),
    }
}

/// A loaded argument with the shape the engine sees.
struct Loaded {
    array: FloatArray,
    shape: Vec<usize>,
}

/// Runs the reduction and writes the outputs; returns the files written.
pub fn run(a: &ReduceArgs) -> Result<Vec<Written>> {
    if a.args.is_empty() {
        return Err(CliError::new(
            "no --arg given: the formula needs its arguments",
        ));
    }
    for (i, s) in a.args.iter().enumerate() {
        if let Some(prev) = a.args[..i].iter().position(|p| p.name == s.name) {
            return Err(CliError::new(format!(
                "--arg {}: the name {:?} is already used by argument {prev}",
                i, s.name
            )));
        }
    }
    // keops refuses a K for reductions that take none (--k is K).
    let red = Reduction::from_name(&a.reduction, a.k)
        .map_err(|e| CliError::new(format!("--reduction/--k: {e}")))?;
    let mut loaded = Vec::with_capacity(a.args.len());
    let mut aliases = Vec::with_capacity(a.args.len());
    for (index, s) in a.args.iter().enumerate() {
        let ctx = |e: CliError| CliError::new(format!("argument {index} ({}): {e}", s.name));
        let array = npy::read_float(&s.path).map_err(ctx)?;
        let shape = engine_shape(s.cat, &array.shape)
            .map_err(|m| ctx(CliError::new(format!("{}: {m}", s.path.display()))))?;
        let dim = shape.last().copied().unwrap_or(1);
        aliases.push(format!("{} = {}({index},{dim})", s.name, s.cat.name()));
        loaded.push(Loaded { array, shape });
    }
    let genred = match &a.weight {
        Some(w) => Genred::with_weight(&a.formula, w, &aliases, red, a.axis)?,
        None => Genred::new(&a.formula, &aliases, red, a.axis)?,
    };
    let opts = Options {
        threads: a.threads,
        backend: a.backend,
        ..Default::default()
    };
    let dtype = a.dtype.unwrap_or_else(|| loaded[0].array.data.dtype());
    match dtype {
        Dtype::F32 => compute::<f32>(a, &genred, &loaded, &opts, dtype),
        Dtype::F64 => compute::<f64>(a, &genred, &loaded, &opts, dtype),
    }
}

/// The shape given to the engine: a 1-D `Vi`/`Vj` array `(n,)` is read as `(n, 1)` and a
/// 0-d `Pm` array as `(1,)`.
fn engine_shape(cat: Category, shape: &[usize]) -> std::result::Result<Vec<usize>, String> {
    match (cat, shape.len()) {
        (Category::Pm, 0) => Ok(vec![1]),
        (Category::Vi | Category::Vj, 0) => Err(format!(
            "a 0-d array cannot be a {} variable: expected shape (..., n, d) or (n,)",
            cat.name()
        )),
        (Category::Vi | Category::Vj, 1) => Ok(vec![shape[0], 1]),
        _ => Ok(shape.to_vec()),
    }
}

/// Runs the reduction in `T` (`dtype`) and writes the outputs.
fn compute<T: Element + npyz::AutoSerialize>(
    a: &ReduceArgs,
    genred: &Genred,
    loaded: &[Loaded],
    opts: &Options,
    dtype: Dtype,
) -> Result<Vec<Written>> {
    let data: Vec<Vec<T>> = loaded.iter().map(|l| l.array.data.to_vec::<T>()).collect();
    let args: Vec<Arg<'_, T>> = data
        .iter()
        .zip(loaded)
        .map(|(d, l)| Arg::new(d, &l.shape))
        .collect();
    let r: Reduced<T> = genred.call_with(&args, opts).map_err(|e| describe(e, a))?;
    let (values_path, indices_path) = match (&r.values, &r.indices) {
        (Some(_), Some(_)) => (a.out.clone(), indices_path(&a.out)),
        _ => (a.out.clone(), a.out.clone()),
    };
    let mut written = Vec::new();
    if let Some(v) = &r.values {
        npy::write(&values_path, &v.data, &v.shape)?;
        written.push(Written {
            path: values_path,
            dtype: dtype.name(),
            shape: v.shape.clone(),
        });
    }
    if let Some(i) = &r.indices {
        npy::write(&indices_path, &i.data, &i.shape)?;
        written.push(Written {
            path: indices_path,
            dtype: "int64",
            shape: i.shape.clone(),
        });
    }
    if written.is_empty() {
        return Err(CliError::new("the reduction returned no output"));
    }
    Ok(written)
}

/// A file written by [`run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Where.
    pub path: PathBuf,
    /// NumPy dtype name.
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
}

/// A keops error with the name and file of the argument it is about.
fn describe(e: keops::KeopsError, a: &ReduceArgs) -> CliError {
    match &e {
        keops::KeopsError::Argument { index, msg } => match a.args.get(*index) {
            Some(s) => CliError::new(format!(
                "argument {index} ({} = {}:{}): {msg}",
                s.name,
                s.cat.name(),
                s.path.display()
            )),
            None => e.into(),
        },
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_a_full_command_line() {
        let p = parse(&sv(&[
            "-SqDist(x,y)",
            "--arg",
            "x=Vi:x.npy",
            "--arg=y=Vj:dir/y.npy",
            "--reduction",
            "ArgKMin",
            "--k=5",
            "--axis",
            "0",
            "-o",
            "out.npy",
            "--dtype",
            "float64",
            "--threads",
            "2",
            "--backend",
            "CPU",
        ]))
        .expect("parses");
        let Parsed::Run(a) = p else {
            panic!("not a run")
        };
        assert_eq!(a.formula, "-SqDist(x,y)");
        assert_eq!(a.args[1].path, PathBuf::from("dir/y.npy"));
        assert_eq!(a.args[1].cat, Category::Vj);
        assert_eq!((a.k, a.axis, a.threads), (Some(5), 0, Some(2)));
        assert_eq!(a.dtype, Some(Dtype::F64));
        assert_eq!(a.backend, Backend::Cpu);
    }

    #[test]
    fn rejects_bad_command_lines() {
        let base = [
            "F",
            "--arg",
            "x=Vi:x.npy",
            "--reduction",
            "Sum",
            "--axis",
            "1",
            "-o",
            "o.npy",
        ];
        let with = |extra: &[&str]| {
            let mut v = sv(&base);
            v.extend(sv(extra));
            parse(&v)
        };
        assert!(with(&[]).is_ok());
        assert!(with(&["--bogus"])
            .unwrap_err()
            .to_string()
            .contains("unknown option"));
        assert!(with(&["--threads"])
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(with(&["--threads", "0"]).is_err());
        assert!(with(&["--axis", "2"]).is_err());
        assert!(with(&["G"])
            .unwrap_err()
            .to_string()
            .contains("already given"));
        assert!(with(&["--dtype", "int8"]).is_err());
        assert!(ArgSpec::parse("x=Vx:a.npy")
            .unwrap_err()
            .to_string()
            .contains("category"));
        assert!(ArgSpec::parse("x:Vi=a.npy").is_err());
        assert!(ArgSpec::parse("1x=Vi:a.npy").is_err());
        assert!(ArgSpec::parse("x=Vi:").is_err());
        assert!(parse(&sv(&["F"]))
            .unwrap_err()
            .to_string()
            .contains("missing"));
        let mut v = sv(&["--", "-o"]);
        v.extend(sv(&base[1..]));
        let Ok(Parsed::Run(a)) = parse(&v) else {
            panic!("`--` then a formula")
        };
        assert_eq!(a.formula, "-o");
    }

    #[test]
    fn indices_path_replaces_the_extension() {
        assert_eq!(
            indices_path(Path::new("a/out.npy")),
            PathBuf::from("a/out_indices.npy")
        );
        assert_eq!(
            indices_path(Path::new("out")),
            PathBuf::from("out_indices.npy")
        );
    }
}
