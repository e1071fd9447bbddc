-- Neovim's own LSP client (0.7+) on `sqlplan lsp`: opens a template, breaks it
-- without saving, waits for the server's diagnostics and writes them to a file.
-- Arguments come from the environment the test sets.
local bin = os.getenv('SQLPLAN_LSP_BIN')
local repo = os.getenv('SQLPLAN_LSP_ROOT')
local template = os.getenv('SQLPLAN_LSP_FILE')
local out = os.getenv('SQLPLAN_LSP_OUT')

vim.cmd('edit ' .. repo .. '/' .. template)
local buf = vim.api.nvim_get_current_buf()
local client = vim.lsp.start_client({ name = 'sqlplan', cmd = { bin, 'lsp' }, root_dir = repo })
vim.lsp.buf_attach_client(buf, client)
vim.wait(10000, function()
  local c = vim.lsp.get_client_by_id(client)
  return c ~= nil and c.initialized
end, 50)

-- Break the first SELECT of the buffer (unsaved).
local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
for i, line in ipairs(lines) do
  local changed, n = line:gsub('SELECT', 'SELECT no_such_column,', 1)
  if n > 0 then
    vim.api.nvim_buf_set_lines(buf, i - 1, i, false, { changed })
    break
  end
end

vim.wait(60000, function() return #vim.diagnostic.get(buf) > 0 end, 100)
local found = {}
for _, d in ipairs(vim.diagnostic.get(buf)) do
  table.insert(found, string.format('%d\t%s\t%s', d.lnum, d.code or '', d.message:gsub('\n', ' ')))
end
local f = io.open(out, 'w')
f:write(table.concat(found, '\n'))
f:close()
vim.lsp.stop_client(client)
vim.cmd('qa!')
