import { z } from 'zod'
import { tool } from '@langchain/core/tools'
import { HumanMessage, SystemMessage, type AIMessage } from '@langchain/core/messages'
import type { BaseChatModel } from '@langchain/core/language_models/chat_models'
import type { Issue } from './forge.ts'

/**
 * Whatever writes the code change for an issue. The agents layer may later plug its own brain in here;
 * governance only needs "issue + repository view in, file edits + rationale out".
 */
export interface ChangeAuthor {
  proposeChange (input: ChangeRequest): Promise<ProposedChange>
}

export interface ChangeRequest {
  issue: Issue
  /** Every tracked path of the repository at the base commit. */
  files: string[]
  /** Contents of the files most likely relevant (bounded in size by the caller). */
  contents: Record<string, string>
  /** Why the previous attempt was refused, when retrying (e.g. the failing test output). */
  feedback?: string
}

export const FileEditSchema = z.object({
  path: z.string().min(1).max(300).describe('Repository-relative path, forward slashes, no ".." segments.'),
  /** The whole new content; null deletes the file. */
  content: z.string().max(200_000).nullable().describe('The complete new file content, or null to delete the file.')
}).strict()

export const ProposedChangeSchema = z.object({
  title: z.string().min(3).max(120).describe('A short pull-request title in the imperative mood.'),
  rationale: z.string().min(1).max(5000).describe('Why this change resolves the issue, for the human reviewers.'),
  edits: z.array(FileEditSchema).min(1).max(50)
}).strict()

export type FileEdit = z.infer<typeof FileEditSchema>
export type ProposedChange = z.infer<typeof ProposedChangeSchema>

const SYSTEM = `You are a careful software engineer working on a shared open-source codebase.
You receive one issue and a view of the repository. Make the smallest change that resolves the issue,
keep the project's style, and keep its tests passing (add a test when the issue is a bug).
Reply by calling the submit_change tool exactly once with whole-file contents for every file you change.`

/**
 * A ChangeAuthor on any LangChain chat model that supports tool calling: the model must answer with a
 * submit_change call, whose arguments are validated with the same zod schema the tool declares.
 * Tool calling (rather than "reply with JSON") lets providers constrain the output to the schema.
 */
export class ChatModelChangeAuthor implements ChangeAuthor {
  constructor (private readonly model: BaseChatModel) {}

  async proposeChange (input: ChangeRequest): Promise<ProposedChange> {
    const submit = tool(async () => 'submitted', { name: 'submit_change', description: 'Submit the change for this issue.', schema: ProposedChangeSchema })
    if (typeof this.model.bindTools !== 'function') throw new Error(`chat model ${this.model._llmType()} does not support tool calling, which the change author needs`)
    const model = this.model.bindTools([submit], { tool_choice: 'submit_change' })
    const reply = await model.invoke([new SystemMessage(SYSTEM), new HumanMessage(prompt(input))]) as AIMessage
    const call = reply.tool_calls?.find((c) => c.name === 'submit_change')
    if (call === undefined) throw new Error(`the model answered issue #${input.issue.number} without calling submit_change: ${String(reply.content).slice(0, 200)}`)
    const parsed = ProposedChangeSchema.safeParse(call.args)
    if (!parsed.success) throw new Error(`the model's change for issue #${input.issue.number} is malformed: ${z.prettifyError(parsed.error)}`)
    return parsed.data
  }
}

function prompt (input: ChangeRequest): string {
  const parts = [
    `Issue #${input.issue.number}: ${input.issue.title}`,
    input.issue.body,
    `Repository files:\n${input.files.join('\n')}`,
    ...Object.entries(input.contents).map(([path, text]) => `--- ${path}\n${text}`)
  ]
  if (input.feedback !== undefined) parts.push(`Your previous attempt was refused:\n${input.feedback}`)
  return parts.join('\n\n')
}
