//! The `realm` resource: one loaded model for one tenant.

use std::rc::Rc;
use std::sync::Arc;

use crate::bindings::exports::realm::engine::engine::{Generation as GenerationHandle, GuestRealm};
use crate::chat::ChatTemplate;
use crate::compute::{ComputeError, Graph, Weights};
use crate::constraint::Constraints;
use crate::generation::Generation;
use crate::metadata::{Metadata, keys};
use crate::models::{self, Hyperparameters};
use crate::tokenizer::Tokenizer;
use crate::tools::{self, ToolFormat};
use crate::{ChatRequest, CompletionRequest, Error, Message, ModelInfo, RealmConfig};

/// Everything a generation needs from its realm; immutable once loaded.
pub struct Model {
    pub graph: Graph,
    pub tokenizer: Arc<Tokenizer>,
    pub constraints: Constraints,
    pub chat_template: ChatTemplate,
    pub hyperparameters: Hyperparameters,
    pub info: ModelInfo,
    // Keeps the host's mapping of the file open for as long as the graph runs.
    _weights: Weights,
}

pub struct Realm {
    model: Rc<Model>,
}

impl GuestRealm for Realm {
    fn new(config: RealmConfig) -> Result<Self, Error> {
        if config.context_length == 0 {
            return Err(Error::InvalidConfig("`context-length` must be at least 1".into()));
        }
        if config.model.is_empty() {
            return Err(Error::InvalidConfig("`model` must name a model".into()));
        }
        let weights = Weights::open(&config.model).map_err(from_compute)?;
        let mut meta = Metadata::new(weights.metadata())?;
        let tensors = weights.tensors();
        let architecture = models::load(&meta, &tensors)?;
        let tokenizer = Arc::new(Tokenizer::from_metadata(&mut meta)?);
        let chat_template = ChatTemplate::from_metadata(&meta, &tokenizer)?;
        let graph = Graph::compile(&weights, &architecture.graph).map_err(from_compute)?;
        let hp = architecture.hyperparameters;
        let info = ModelInfo {
            architecture: meta.architecture().to_string(),
            name: meta.text(keys::NAME)?.unwrap_or(&config.model).to_string(),
            vocab_size: tokenizer.vocab_size(),
            context_length: config.context_length.min(hp.trained_context.max(1)),
            trained_context_length: hp.trained_context,
            bos: tokenizer.bos,
            eos: tokenizer.eos,
        };
        let model = Model {
            graph,
            constraints: Constraints::new(tokenizer.clone()),
            tokenizer,
            chat_template,
            hyperparameters: hp,
            info,
            _weights: weights,
        };
        Ok(Self { model: Rc::new(model) })
    }

    fn info(&self) -> ModelInfo {
        self.model.info.clone()
    }

    fn tokenize(&self, text: String, add_special: bool, parse_special: bool) -> Result<Vec<u32>, Error> {
        Ok(self.model.tokenizer.encode(&text, add_special, parse_special))
    }

    fn detokenize(&self, tokens: Vec<u32>) -> Result<String, Error> {
        let vocab = self.model.tokenizer.vocab_size();
        if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::InvalidRequest(format!(
                "token {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(self.model.tokenizer.decode(&tokens))
    }

    fn evaluate(&self, tokens: Vec<u32>) -> Result<Vec<f32>, Error> {
        crate::generation::evaluate(&self.model, &tokens)
    }

    fn render_chat(&self, messages: Vec<Message>, add_generation_prompt: bool) -> Result<String, Error> {
        self.model.chat_template.render(&messages, add_generation_prompt, None)
    }

    fn chat(&self, request: ChatRequest) -> Result<GenerationHandle, Error> {
        let format = self.model.chat_template.tool_format;
        let prepared = request.tools.as_ref().map(|t| tools::prepare(t, format)).transpose()?;
        let (listed, system, tool_constraint, parser) = match prepared {
            Some(p) => (Some(p.template_tools), p.system, p.constraint, p.parser),
            None => (None, None, None, None),
        };
        // A constraint on the whole reply would rule the calls out (or, in the
        // generic format, clash with the calls' own constraint).
        let calls_on = parser.is_some();
        let constraint = match (request.constraint, tool_constraint) {
            (Some(_), _) if calls_on => {
                return Err(Error::InvalidRequest(
                    "`tools` cannot go with `response_format` or another output constraint \
                     (unless `tool_choice` is `none`)"
                        .into(),
                ));
            }
            (asked, tools) => asked.or(tools),
        };
        let mut messages = request.messages;
        if format == ToolFormat::Generic {
            messages = tools::generic_messages(messages, system.as_deref());
        }
        let prompt = self.model.chat_template.render(&messages, true, listed.as_ref())?;
        let request = CompletionRequest {
            prompt,
            max_tokens: request.max_tokens,
            sampling: request.sampling,
            ignore_eos: request.ignore_eos,
            stop: request.stop,
            logprobs: request.logprobs,
            constraint,
        };
        let prompt = self.model.tokenizer.encode(&request.prompt, true, true);
        Generation::start(self.model.clone(), prompt, request, parser).map(GenerationHandle::new)
    }

    fn complete(&self, request: CompletionRequest) -> Result<GenerationHandle, Error> {
        let prompt = self.model.tokenizer.encode(&request.prompt, true, true);
        Generation::start(self.model.clone(), prompt, request, None).map(GenerationHandle::new)
    }
}

/// Maps a compute failure to the engine error a client can act on.
pub fn from_compute(error: ComputeError) -> Error {
    match error {
        ComputeError::NotFound(m) => Error::ModelNotFound(m),
        ComputeError::Denied(m) => Error::PermissionDenied(m),
        ComputeError::InvalidFile(m) | ComputeError::Unsupported(m) => Error::UnsupportedModel(m),
        ComputeError::InvalidGraph(m) => Error::UnsupportedModel(format!("graph: {m}")),
        ComputeError::InvalidStep(m) => Error::InvalidRequest(m),
        ComputeError::QuotaExceeded(m) => Error::OutOfMemory(m),
        ComputeError::Internal(m) => Error::Internal(m),
    }
}
