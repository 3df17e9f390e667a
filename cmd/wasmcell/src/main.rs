//! `wasmcell`: operator tools beside the shim.
//!
//! - `wasmcell image build`: package .wasm files into an OCI image tarball.
//! - `wasmcell compile`: warm a node's compile cache.
//! - `wasmcell explain`: print the grants a container's spec gives its guest.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use wasmcell_oci::image::{ImageFile, ImageSpec};

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
            let files = files
                .iter()
                .map(|f| f.parse::<ImageFile>())
                .collect::<Result<Vec<_>, _>>()?;
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
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("create {}", tmp.display()))?;
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
        Command::Compile { cache_dir, inputs } => {
            let mut config = wasmcell_engine::cache::CacheConfig::from_env().unwrap_or_default();
            if let Some(d) = cache_dir {
                config.dir = d;
            }
            let engine = wasmcell_engine::Engine::with_cache(Some(config.clone()))?;
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
                    let result = wasmcell_oci::classify(&wasm)
                        .map_err(|e| anyhow::anyhow!(e))
                        .and_then(|kind| engine.prepare(&wasm, kind).map_err(|e| anyhow::anyhow!(e)));
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
        Command::Explain { path, json } => {
            let (bundle, config) = if path.is_dir() {
                (path.clone(), path.join("config.json"))
            } else {
                (
                    path.parent().map(PathBuf::from).unwrap_or_default(),
                    path.clone(),
                )
            };
            let bytes =
                std::fs::read(&config).with_context(|| format!("read {}", config.display()))?;
            let spec = wasmcell_grants::parse_spec(&bytes)?;
            let annotations: HashMap<String, String> =
                spec.annotations().clone().unwrap_or_default();
            let grants = match wasmcell_grants::grants(
                &spec,
                &annotations,
                &wasmcell_grants::Options { bundle },
            ) {
                Ok(g) => g,
                Err(e) => bail!("this container would be refused: {e}"),
            };
            if json {
                let rows: Vec<_> = grants
                    .rows()
                    .into_iter()
                    .map(|r| serde_json::json!({"setting": r.setting, "value": r.value, "grant": r.grant}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{grants}");
            }
            Ok(())
        }
    }
}
