//! A request's dispatch on the main thread, one at a time: system info, the matmul
//! check, load, generate, unload, make-model.

use protocol::{Reply, Request, RequestId, WorkerError, WorkerErrorKind};

use super::{
    errors::{cancelled, mlx_error},
    Worker,
};
use crate::{make_model, mlx_info};

/// The largest `Matmul` check served.
const MAX_MATMUL: u32 = 4096;

impl Worker {
    pub(super) fn handle(&mut self, id: RequestId, body: Request) {
        if self.control.is_cancelled(id) {
            self.link.reply(id, Reply::Error(cancelled()));
            return;
        }
        *self.link.request.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        let reply = match body {
            Request::SystemInfo => Reply::SystemInfo(mlx_info::system_info()),
            Request::Matmul { size } => matmul(size),
            Request::Load(req) => self.load(id, req),
            Request::Generate(req) => self.generate(id, req),
            Request::Unload => {
                self.engine = None;
                let _ = mlx_rs::memory::clear_cache();
                Reply::Unloaded
            }
            Request::MakeModel(spec) => match make_model::make_model(&spec) {
                Ok(weight_bytes) => Reply::ModelMade {
                    dir: spec.dir,
                    weight_bytes,
                },
                Err(e) => Reply::Error(e),
            },
        };
        self.link.reply(id, reply);
        *self.link.request.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn matmul(size: u32) -> Reply {
    if size == 0 || size > MAX_MATMUL {
        return Reply::Error(WorkerError {
            kind: WorkerErrorKind::BadRequest,
            message: format!("matmul size {size} is not in 1..={MAX_MATMUL}"),
        });
    }
    match mlx_info::matmul_check(size) {
        Ok((sum, ms)) => Reply::Matmul { size, sum, ms },
        Err(e) => Reply::Error(mlx_error(WorkerError {
            kind: WorkerErrorKind::Internal,
            message: e.to_string(),
        })),
    }
}
