//! `wasmcell`: operator tools beside the shim.
//!
//! - `wasmcell image build`: package .wasm files into an OCI image tarball.
//! - `wasmcell compile`: warm a node's compile cache.
//! - `wasmcell explain`: print the grants a container's spec gives its guest.
//! - `wasmcell containerd-config add|remove`: register the CRI runtime handler
//!   `wasmtime` in containerd's config.toml, or take it out again.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use wasmcell_oci::image::{ImageFile, ImageSpec};

mod containerd_config;

#[derive(Parser)]
#[command(name = "wasmcell", version, about = "Tools for the wasmcell containerd shim")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with OCI images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Warm the compile cache of a node ahead of time: compile .wasm files,
    /// or every .wasm inside OCI image tarballs, into the cache the shim uses.
    Compile {
        /// Cache directory (default: $WASMCELL_CACHE_DIR or /var/lib/wasmcell/cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// The runtime handler's policy file (its `ConfigPath`), whose
        /// `deny_wasm_features` the shim's engine applies: artifacts of
        /// engines with different features are distinct cache entries.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// .wasm files or image tarballs (`wasmcell image build` output).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Print what a container's guest would be granted, from a bundle
    /// directory or a config.json.
    Explain {
        /// A bundle directory (holding config.json) or a config.json file.
        path: PathBuf,
        /// Print JSON rows instead of a table.
        #[arg(long)]
        json: bool,
        /// The runtime handler's policy file (its `ConfigPath`), to show
        /// what it denies this container.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Register the CRI runtime handler `wasmtime` in containerd's config
    /// file, or remove it again.
    #[command(subcommand)]
    ContainerdConfig(ContainerdConfigCmd),
}

#[derive(Subcommand)]
enum ContainerdConfigCmd {
    /// Register the runtime handler `wasmtime` (io.containerd.wasmtime.v1).
    ///
    /// Appends the table `<CRI plugin>.containerd.runtimes.wasmtime` for the
    /// file's config version (1, 2 or 3) between the marker lines `# wasmcell
    /// runtime handler` and `# end wasmcell runtime handler`, with runc too if
    /// the file does not register runc and runc is its default runtime
    /// (version 1 and 2). Keeps the previous file
    /// as <CONFIG>.wasmcell-backup; creates a `version = 2` file if there is
    /// none. Changes nothing if the handler is there already; refuses a file it
    /// cannot edit safely.
    Add {
        /// containerd's config file.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        config: PathBuf,
        /// Only check that the file can be edited: print nothing but errors,
        /// change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Remove what `add` added.
    ///
    /// Restores the backup if the file is otherwise unchanged since `add`,
    /// deletes a file that `add` created, else removes only the marked block. A
    /// `wasmtime` runtime registered without the markers is left alone.
    Remove {
        /// containerd's config file.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        config: PathBuf,
        /// Only check that the file can be edited: print nothing but errors,
        /// change nothing.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an OCI image-layout tarball (platform wasi/wasm) for
    /// `ctr image import --all-platforms`.
    Build {
        /// Image reference, e.g. example.com/hello:latest.
        #[arg(long, short = 't')]
        name: String,
        /// Output tarball.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Entrypoint (repeat for more words); default: the first .wasm file.
        #[arg(long)]
        entrypoint: Vec<String>,
        /// Default arguments (image Cmd); repeat for more words.
        #[arg(long)]
        cmd: Vec<String>,
        /// Environment variable KEY=VALUE; repeatable.
        #[arg(long)]
        env: Vec<String>,
        /// Label KEY=VALUE; repeatable.
        #[arg(long)]
        label: Vec<String>,
        /// Working directory.
        #[arg(long)]
        workdir: Option<String>,
        /// Platform OS/ARCH of the image.
        #[arg(long, default_value = "wasi/wasm")]
        platform: String,
        /// Each .wasm file as an `application/wasm` layer of an ordinary
        /// image (needs containerd >= 1.7.7 or 2.x) instead of one tar layer.
        #[arg(long, conflicts_with = "artifact")]
        wasm_layers: bool,
        /// A CNCF TAG Runtime Wasm OCI artifact (config
        /// application/vnd.wasm.config.v0+json): runs through CRI with the
        /// pod's command on containerd >= 1.7.7 / 2.x; `ctr run` refuses it.
        /// Entrypoint, cmd, env, labels, workdir and platform do not apply.
        #[arg(long)]
        artifact: bool,
        /// Files: SRC (placed at /basename) or SRC:DEST.
        #[arg(required = true)]
        files: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::ContainerdConfig(ContainerdConfigCmd::Add { config, check }) => containerd_config::add(&config, check),
        Command::ContainerdConfig(ContainerdConfigCmd::Remove { config, check }) => {
            containerd_config::remove(&config, check)
        }
        Command::Image(ImageCmd::Build {
            name,
            output,
            entrypoint,
            cmd,
            env,
            label,
            workdir,
            platform,
            wasm_layers,
            artifact,
            files,
        }) => {
            let files = files.iter().map(|f| f.parse::<ImageFile>()).collect::<Result<Vec<_>, _>>()?;
            let spec = ImageSpec {
                name,
                files,
                entrypoint: (!entrypoint.is_empty()).then_some(entrypoint),
                cmd,
                env,
                labels: label,
                working_dir: workdir,
                platform: Some(platform),
                layout: if artifact {
                    wasmcell_oci::image::Layout::Artifact
                } else if wasm_layers {
                    wasmcell_oci::image::Layout::WasmLayers
                } else {
                    wasmcell_oci::image::Layout::Tar
                },
            };
            let tmp = output.with_extension("tmp");
            let file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            let built = match wasmcell_oci::image::build(&spec, std::io::BufWriter::new(file)) {
                Ok(b) => b,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("build image {}", spec.name));
                }
            };
            std::fs::rename(&tmp, &output)?;
            println!("{} {}", built.manifest.digest(), output.display());
            Ok(())
        }
        Command::Compile { cache_dir, policy, inputs } => {
            let mut config = wasmcell_engine::cache::CacheConfig::from_env().unwrap_or_default();
            if let Some(d) = cache_dir {
                config.dir = d;
            }
            let policy = policy.map(|p| read_policy(&p)).transpose()?;
            // Optimized code into the cache: warming is for later starts.
            let engine = wasmcell_engine::Engine::with_policy(Some(config.clone()), None, policy)?
                .with_first_start(wasmcell_engine::FirstStart::Optimized);
            let mut failed = false;
            for input in inputs {
                let bytes = std::fs::read(&input).with_context(|| format!("read {}", input.display()))?;
                let items: Vec<(String, Vec<u8>)> = if wasmcell_oci::classify(&bytes).is_ok() {
                    vec![(input.display().to_string(), bytes)]
                } else {
                    wasmcell_oci::image::wasm_files(bytes.as_slice())
                        .with_context(|| format!("{} is neither Wasm nor an image tarball", input.display()))?
                };
                for (name, wasm) in items {
                    let started = std::time::Instant::now();
                    let result = wasmcell_oci::classify(&wasm).map_err(|e| anyhow::anyhow!(e)).and_then(|kind| {
                        engine
                            .prepare(&wasm, kind, wasmcell_engine::Granted { keyvalue: true })
                            .map_err(|e| anyhow::anyhow!(e))
                    });
                    match result {
                        Ok(_) => println!("{name}: ready ({} ms)", started.elapsed().as_millis()),
                        Err(e) => {
                            failed = true;
                            eprintln!("{name}: {e}");
                        }
                    }
                }
            }
            println!("cache: {}", config.dir.display());
            if failed {
                bail!("some inputs could not be compiled");
            }
            Ok(())
        }
        Command::Explain { path, json, policy } => {
            let policy = policy.map(|p| read_policy(&p)).transpose()?;
            let (bundle, config) = if path.is_dir() {
                (path.clone(), path.join("config.json"))
            } else {
                (path.parent().map(PathBuf::from).unwrap_or_default(), path.clone())
            };
            let bytes = std::fs::read(&config).with_context(|| format!("read {}", config.display()))?;
            let spec = wasmcell_grants::parse_spec(&bytes)?;
            let annotations: HashMap<String, String> = spec.annotations().clone().unwrap_or_default();
            let grants = match wasmcell_grants::grants(&spec, &annotations, &wasmcell_grants::Options { bundle }) {
                Ok(g) => g,
                Err(e) => bail!("this container would be refused: {e}"),
            };
            // What the program runs as, when its file is in the rootfs: read
            // from its exports and imports, not compiled.
            let granted = wasmcell_engine::Granted { keyvalue: grants.keyvalue != wasmcell_grants::KeyValue::Denied };
            let program = grants.root.host().and_then(|root| {
                let entry = root.join(grants.program.entrypoint.trim_start_matches('/'));
                std::fs::read(&entry).ok().map(|wasm| {
                    let what = wasmcell_engine::describe(&wasm);
                    match wasmcell_engine::admit(&wasm, policy.as_ref(), granted) {
                        Ok(()) => what,
                        Err(e) => format!("{what}; refused at create: {e}"),
                    }
                })
            });
            let mut rows = grants.rows();
            // The config keys (never their values, which may be secrets).
            if let Some(dir) = &grants.config_dir {
                let (value, grant) = match wasmcell_engine::read_config_dir(dir) {
                    Ok(entries) => (
                        format!("{} keys", entries.len()),
                        format!("keys: {}", entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")),
                    ),
                    Err(e) => ("unreadable".to_string(), format!("refused at create: {e}")),
                };
                rows.push(wasmcell_grants::Row { setting: "wasi:config".into(), value, grant });
            }
            rows.push(match &policy {
                Some(p) => wasmcell_grants::Row {
                    setting: "runtime policy (ConfigPath)".into(),
                    value: p.path.display().to_string(),
                    grant: format!(
                        "denies imports [{}]; Wasm features off [{}]",
                        p.deny_imports.join(", "),
                        p.deny_wasm_features.join(", ")
                    ),
                },
                None => wasmcell_grants::Row {
                    setting: "runtime policy (ConfigPath)".into(),
                    value: "none".into(),
                    grant: "no imports denied beyond the grants; Wasmtime 48's default Wasm features".into(),
                },
            });
            if json {
                let mut rows: Vec<_> = rows
                    .into_iter()
                    .map(|r| serde_json::json!({"setting": r.setting, "value": r.value, "grant": r.grant}))
                    .collect();
                if let Some(p) = &program {
                    rows.push(
                        serde_json::json!({"setting": "program", "value": grants.program.entrypoint, "grant": p}),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", wasmcell_grants::table(&rows));
                if let Some(p) = program {
                    println!("\nprogram {} runs as: {p}", grants.program.entrypoint);
                }
            }
            Ok(())
        }
    }
}

/// A runtime handler's policy file, checked as the shim checks it.
fn read_policy(path: &std::path::Path) -> Result<wasmcell_grants::Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(wasmcell_grants::Policy::parse(&text, path)?)
}
